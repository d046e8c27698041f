"""Partstyle engine: text-guided stylization of 3D meshes (color and displacement per vertex)."""

__version__ = "0.1.0"
