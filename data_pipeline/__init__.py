"""Data: sources of training clips and the Grain loaders that batch them for the mesh."""
