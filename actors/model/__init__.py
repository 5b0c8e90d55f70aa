"""Model code: architectures, parallel layers, loading. Knows nothing of processes or actors."""
