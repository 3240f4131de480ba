from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "learning"
    verbose_name = "Active learning"

    def ready(self) -> None:
        # The reading workflow asks learning through a seam of its own (tasks imports no learning).
        from learning.workflow import WorkflowLearning
        from tasks import learning_seam

        learning_seam.register(WorkflowLearning())
