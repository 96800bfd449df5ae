"""The bottom layer: helpers every other layer may use, importing nothing of lowrank but
:mod:`lowrank.errors` (devices, finiteness, out-of-memory, seeded generators, options)."""
