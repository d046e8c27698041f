"""Textures on the mesh's own UV layout: which surface point each texel shows (:mod:`.texels`), the
style field baked there into base-color, displacement and normal maps (:mod:`.bake`), and the maps'
padding and image encodings (:mod:`.maps`). docs/textures.md is the guide."""
