"""Training: the Trainer subclass, the hardware preflight, the callbacks, CPU speed-ups and the run lifecycle."""
