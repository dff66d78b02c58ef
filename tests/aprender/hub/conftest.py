"""Hub tests use the suite-wide `local_hub` fixture (tests/fixtures/hub.py, registered in tests/conftest.py)."""
