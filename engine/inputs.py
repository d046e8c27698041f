"""A run's inputs as a command line or a batch manifest names them: a mesh file or a built-in
sample (``sample:NAME[@FACES]``), and part weights (``labels`` or a ``parts.npz``).

Light to import: the command line imports it before it parses its arguments."""

from __future__ import annotations

import os

from .errors import MeshError, PartNotFound

SAMPLE_PREFIX = "sample:"


def load_input_mesh(spec: str, *, merge_vertices: bool = False):
    """A :class:`Mesh` (object frame) from a file path or ``sample:NAME[@FACES]``."""
    from .mesh import load_mesh
    from .samples import parse_sample_spec, sample_mesh

    if spec.startswith(SAMPLE_PREFIX):
        name, faces = parse_sample_spec(spec[len(SAMPLE_PREFIX) :])
        return sample_mesh(name, faces)
    if not os.path.exists(spec):
        raise MeshError(f"{spec}: no such file (for a built-in mesh write sample:lamp, sample:chair or sample:mug).")
    return load_mesh(spec, merge_vertices=merge_vertices)


def load_part_weights(source: str, mesh):
    """:class:`PartWeights` from 'labels' (a built-in sample's own) or a parts.npz written by `locate`."""
    from .export import read_part_weights
    from .parts import PartWeights

    if source == "labels":
        if mesh.labels is None:
            raise PartNotFound(
                "--parts-from labels: only the built-in samples carry part labels; use a parts.npz from `locate`."
            )
        return PartWeights.from_labels(mesh.labels, mesh.label_names)
    return read_part_weights(source, mesh.num_vertices)
