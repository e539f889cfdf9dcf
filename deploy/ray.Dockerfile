# samtune's image: the RayJob's head and GPU workers (deploy/rayjob.yaml), and any
# machine that runs `samtune` in a container.  Ray's own CUDA image at the Ray and
# Python of constraints.txt, with samtune and its dependencies installed at the pinned
# versions (torch 2.14.1, the CUDA 13.0 build the tests ran on: the wheels bring their
# own CUDA libraries, so the host needs an NVIDIA driver recent enough for CUDA 13.0).
# Build from the repository root (BuildKit reads ray.Dockerfile.dockerignore beside it):
#   docker build -f deploy/ray.Dockerfile -t REGISTRY/samtune-ray:0.1.0 .
# tests/test_manifests.py holds this file, constraints.txt and the manifests together.
FROM rayproject/ray:2.60.0-py311-gpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
COPY --chown=ray:users pyproject.toml setup.py README.md constraints.txt /home/ray/samtune/
COPY --chown=ray:users samtune /home/ray/samtune/samtune
COPY --chown=ray:users analysis /home/ray/samtune/analysis
COPY --chown=ray:users search_spaces /home/ray/samtune/search_spaces
RUN pip install --no-cache-dir --extra-index-url "$TORCH_INDEX" -c /home/ray/samtune/constraints.txt /home/ray/samtune
# what the manifests call is on PATH: `samtune` (the RayJob's entrypoint) and `ray`
# (KubeRay starts every pod with `ray start`)
RUN samtune --version && ray --version
# KubeRay replaces this with `ray start ...`; `docker run IMAGE` lists the commands
CMD ["samtune", "--help"]
