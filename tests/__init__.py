import pytest

# The shared helpers assert; rewritten like a test module's, their failures show the values compared.
pytest.register_assert_rewrite("tests.helpers")
