"""What a loop and an answer cost, and when tuning pays."""
