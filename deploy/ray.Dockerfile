# The image of the RayJob's head and GPU workers: Ray's own image (same Ray and
# Python as constraints.txt) with samtune installed at the pinned versions.
# Build from the repository root:
#   docker build -f deploy/ray.Dockerfile -t REGISTRY/samtune-ray:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu
COPY --chown=ray:users pyproject.toml setup.py README.md constraints.txt /home/ray/samtune/
COPY --chown=ray:users samtune /home/ray/samtune/samtune
COPY --chown=ray:users analysis /home/ray/samtune/analysis
COPY --chown=ray:users search_spaces /home/ray/samtune/search_spaces
RUN pip install --no-cache-dir -c /home/ray/samtune/constraints.txt /home/ray/samtune
