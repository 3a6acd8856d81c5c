"""The video DiT (Wan 2.1 architecture), its layers, RoPE, attention and FLOP counts."""
