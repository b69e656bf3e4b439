"""A Flower app no device approved: a test fixture of tests/test_deployment.py."""
