"""Support shared by the test suite and bench/: data factories, tiny checkpoints, the reference
forecaster and test-service helpers. Nothing in the service imports it.

Submodules are imported one by one (`from kronos_jobs.testing.factories import make_bars`), so a
test that needs no torch never imports it: only `checkpoints` and `oracle` use torch.
"""
