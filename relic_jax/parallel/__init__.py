"""Device meshes, logical-axis sharding and multi-host set-up."""
