"""What the hyper-parameter search shares between workers."""
