"""Voxels from a trained or stored network: tile by tile, any box of them, and the decoder's floor."""
