"""Development fixtures for the tests and benchmarks: local servers with credentials, synthetic feedback.

They live outside the installed package: a user's ``pip install`` gets the product, not its test rigs.
"""
