"""Active learning's side of tasks.learning_seam: what the reading workflow shows of the models
and tells them. Registered by learning.apps at start-up."""


class WorkflowLearning:
    @property
    def config_relation(self) -> str:
        from learning.models import LearningConfig

        return LearningConfig._meta.db_table

    def model_block_for_reader(self, task) -> dict | None:
        from learning.exposure import model_block_for_reader

        return model_block_for_reader(task)

    def model_output_for_adjudicator(self, task) -> dict | None:
        from learning.exposure import model_output_for_adjudicator

        return model_output_for_adjudicator(task)

    def on_consensus_stored(self, project_id: int) -> None:
        from learning.triggers import on_consensus_stored

        on_consensus_stored(project_id)

    def model_versions(self, task_ids: list[int]) -> dict[int, int]:
        """The model version (number) whose scoring run last set each task's priority: the newest
        TaskScore of a scoring job that succeeded. Absent: the task was never scored."""
        from learning.models import LearningJob, TaskScore

        latest: dict[int, int] = {}
        scores = (TaskScore.objects.filter(task_id__in=task_ids, job__state=LearningJob.State.SUCCEEDED)
                  .order_by("task_id", "created_at", "id").values_list("task_id", "model_version__number"))
        for task_id, number in scores:
            latest[task_id] = number
        return latest

    def model_samples(self, project, consensus):
        from learning.concordance import model_samples

        return model_samples(project, consensus)

    def scores_marker(self, project) -> int | None:
        from learning.concordance import scores_marker

        return scores_marker(project)
