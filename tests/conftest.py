"""The fixtures and the CI skip->fail hook live in ``tests/plugin.py``, a pytest plugin loaded
for the whole suite (``-p tests.plugin`` in pyproject.toml), so that ``connectors/*/tests``
reach them too. Fixtures only ``tests/`` needs may go here."""
