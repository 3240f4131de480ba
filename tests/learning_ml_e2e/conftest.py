from tests.learning.conftest import learning_project  # noqa: F401 - the same small project
