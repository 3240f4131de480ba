"""Active learning over REST: the model registry, the project's learning settings, and jobs."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.recorder import AuditedViewMixin
from core.api.pagination import page_of, paginated_response
from core.errors import NotFound
from core.roles import Perm
from core.selectors import get_project_for
from learning import labels, priority, registry, runs, scoring, training
from learning.models import LearningConfig, LearningJob, ModelVersion
from tasks.models import Task


class ModelVersionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ModelVersion
        fields = ["id", "number", "architecture", "task_kind", "label_key", "classes", "input_spec",
                  "trained_on_task_ids", "gold_task_ids", "gold_metrics", "is_current", "is_promoted",
                  "decision_reason", "created_by_job", "created_at"]
        read_only_fields = fields


class LearningConfigSerializer(serializers.ModelSerializer):
    class Meta:
        model = LearningConfig
        fields = ["is_blind_to_model", "suggestions_enabled", "include_gold_in_training", "retrain_after_consensus",
                  "retrain_every_hours", "label_key", "model_spec", "strategy", "priority_weights", "epochs",
                  "updated_at"]
        read_only_fields = ["updated_at"]

    def validate_strategy(self, value):
        if value not in scoring.STRATEGIES:
            raise serializers.ValidationError(f"One of: {', '.join(scoring.STRATEGIES)}.")
        return value

    def validate(self, attrs):
        strategy = attrs.get("strategy", self.instance.strategy if self.instance else "entropy")
        spec = {**training.DEFAULT_SPEC, **(attrs.get("model_spec", self.instance.model_spec if self.instance
                                                      else None) or {})}
        try:
            dropout = float(spec.get("dropout") or 0)
        except (TypeError, ValueError):
            raise serializers.ValidationError({"model_spec": ["dropout must be a number."]}) from None
        if strategy == scoring.MC_DROPOUT and not dropout > 0:
            raise serializers.ValidationError(
                {"strategy": ["mc_dropout samples the model's dropout: model_spec.dropout must be above 0."]})
        return attrs

    def validate_priority_weights(self, value):
        if not isinstance(value, dict):  # null (a form's "null" too) is no set of weights: the column is NOT NULL
            raise serializers.ValidationError("An object of priority weights (send {} for the defaults).")
        try:
            priority.weights(value)
        except (ValueError, TypeError) as exc:
            raise serializers.ValidationError(str(exc)) from None
        return value

    def validate_model_spec(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("An object of ModelSpec fields.")
        return value

    def validate_label_key(self, value):
        task = Task.objects.filter(project=self.instance.project).order_by("-id").first() if value else None
        version = self.instance.project.current_protocol_version()
        if value and version is not None:
            try:
                labels.classes_for(task or Task(protocol_version=version), value)
            except ValueError as exc:
                raise serializers.ValidationError(str(exc)) from None
        return value


class LearningJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = LearningJob
        fields = ["id", "kind", "state", "progress", "message", "error", "trigger", "result", "created_at",
                  "started_at", "heartbeat_at", "finished_at"]
        read_only_fields = fields


class StartJobSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(LearningJob.Kind.choices)


class ModelVersionListView(AuditedViewMixin, APIView):
    """A project's model versions, newest first, with gold metrics and the promotion decision."""

    audit_object_type = "learning.modelversion"

    @extend_schema(responses=page_of(ModelVersionSerializer), operation_id="api_projects_models_list")
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        return paginated_response(request, self, ModelVersion.objects.filter(project=project).order_by("-number"),
                                  ModelVersionSerializer)


class LearningConfigView(AuditedViewMixin, APIView):
    """The project's learning settings (read: progress viewers; change: managers)."""

    audit_object_type = "learning.learningconfig"

    @extend_schema(responses=LearningConfigSerializer)
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        return Response(LearningConfigSerializer(registry.config_for(project)).data)

    @extend_schema(request=LearningConfigSerializer, responses=LearningConfigSerializer)
    def patch(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        config = registry.config_for(project)
        data = LearningConfigSerializer(config, data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        config = registry.update_config(config, data.validated_data, by=request.user)
        return Response(LearningConfigSerializer(config).data)


class LearningJobListView(AuditedViewMixin, APIView):
    """A project's learning jobs (state, progress, why one failed); managers start new ones."""

    audit_object_type = "learning.learningjob"

    def audit_action(self, request):
        return "list" if request.method == "GET" else "create"

    @extend_schema(responses=page_of(LearningJobSerializer), operation_id="api_projects_learning_jobs_list")
    def get(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        return paginated_response(request, self, LearningJob.objects.filter(project=project).order_by("-id"),
                                  LearningJobSerializer)

    @extend_schema(request=StartJobSerializer, responses={202: LearningJobSerializer, 409: OpenApiResponse(
        description="code job_running: a job of that kind is already queued or running for the project.")})
    def post(self, request, project_pk):
        project = get_project_for(request.user, project_pk, Perm.MANAGE)
        data = StartJobSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        job = runs.start_job(project, data.validated_data["kind"], by=request.user)
        return Response(LearningJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class LearningJobDetailView(AuditedViewMixin, APIView):
    """One learning job: its state, progress and, when it failed, why."""

    audit_object_type = "learning.learningjob"

    def audit_target(self):
        return self.kwargs.get("project_pk"), self.kwargs.get("pk", ""), ""

    @extend_schema(responses=LearningJobSerializer)
    def get(self, request, project_pk, pk):
        project = get_project_for(request.user, project_pk, Perm.VIEW_PROGRESS)
        job = LearningJob.objects.filter(project=project, pk=pk).first()
        if job is None:
            raise NotFound("No such job.")
        return Response(LearningJobSerializer(job).data)

