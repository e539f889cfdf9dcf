"""The bundled search spaces, installed as the package ``samtune.search_spaces``: one
YAML file per search, launched by name with ``samtune search NAME`` (read with
importlib.resources by :mod:`samtune.spec.loading`).  A regular package, not a
namespace, so an editable install maps it onto this folder too."""
