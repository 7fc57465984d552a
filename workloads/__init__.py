"""What runs: job specs, GPU specs, estimates and the transformer training itself."""
