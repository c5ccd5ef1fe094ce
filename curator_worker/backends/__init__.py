"""Run backends, one module each; importing a module registers its backend."""
