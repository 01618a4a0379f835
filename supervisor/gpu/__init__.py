"""GPUs: the NVML backend (real or fake), allocation, measurement and the
eviction policy. Imports nothing of the core."""
