"""Input and output shapes of the core API. No business rules: those are in core services."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.models import LabelEntry, Membership, Organization, Project, ProtocolVersion, User
from core.projects import is_deid_frozen
from core.roles import Role, Subspecialty
from core.schema import PROTOCOL_RULES_SCHEMA


class OrganizationSerializer(serializers.ModelSerializer):
    class Meta:
        model = Organization
        fields = ["id", "name", "kind", "created_at"]
        read_only_fields = ["id", "created_at"]


class UserSerializer(serializers.ModelSerializer):
    # An address is optional, so "" is a value: documented as a plain string, not format email
    email = serializers.CharField(read_only=True)

    class Meta:
        model = User
        fields = ["id", "username", "first_name", "last_name", "email", "organization", "is_org_admin", "pseudonym"]
        read_only_fields = fields


class UserCreateSerializer(serializers.Serializer):
    username = serializers.RegexField(r"^[\w.@+-]{3,150}$")
    password = serializers.CharField(write_only=True, min_length=10, max_length=200)
    first_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    last_name = serializers.CharField(required=False, allow_blank=True, max_length=150)
    email = serializers.EmailField(required=False, allow_blank=True)
    is_org_admin = serializers.BooleanField(default=False)


class ProjectSerializer(serializers.ModelSerializer):
    current_protocol_version = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["id", "name", "client", "vendor", "description", "modalities", "reads_per_task", "is_active",
                  "current_protocol_version", "created_at", "updated_at"]
        read_only_fields = ["id", "vendor", "created_at", "updated_at", "current_protocol_version"]

    def get_current_protocol_version(self, project) -> int | None:
        numbers = [v.number for v in project.protocol_versions.all()]
        return max(numbers) if numbers else None


MODALITIES = ["CT", "MR", "CR", "DX", "MG", "US", "PT", "NM", "XA", "RF", "OT", "SC", "RTDOSE", "SEG", "SR"]


class ProjectWriteSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    client = serializers.PrimaryKeyRelatedField(queryset=Organization.objects.filter(kind="client"))
    vendor = serializers.PrimaryKeyRelatedField(queryset=Organization.objects.filter(kind="vendor"), required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    modalities = serializers.ListField(child=serializers.ChoiceField(MODALITIES), allow_empty=False)
    reads_per_task = serializers.IntegerField(min_value=1, max_value=3, default=2)


class ProjectUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    description = serializers.CharField(required=False, allow_blank=True)
    modalities = serializers.ListField(child=serializers.ChoiceField(MODALITIES), allow_empty=False, required=False)
    reads_per_task = serializers.IntegerField(min_value=1, max_value=3, required=False)
    is_active = serializers.BooleanField(required=False)


class ProjectSettingsSerializer(serializers.ModelSerializer):
    """The queue, quality and de-identification settings a project's managers set (core.projects)."""

    lease_seconds = serializers.IntegerField(min_value=60, max_value=24 * 3600, required=False,
                                             help_text="How long a claimed read stays with its reader (60 s to 1 day).")
    max_open_reads = serializers.IntegerField(min_value=1, max_value=100, required=False,
                                              help_text="Open (claimed) reads one reader may hold.")
    gold_rate = serializers.FloatField(min_value=0, max_value=1, required=False,
                                       help_text="Share of claims served as hidden gold checks (0-1).")
    gold_threshold = serializers.FloatField(min_value=0, max_value=1, required=False,
                                            help_text="Rolling gold score below which a reader is suspended (0-1).")
    gold_window = serializers.IntegerField(min_value=1, max_value=100, required=False,
                                           help_text="Gold checks in the rolling score.")
    calibration_threshold = serializers.FloatField(min_value=0, max_value=1, required=False,
                                                   help_text="Mean score a reader needs on calibration (0-1).")
    deid_private_creator_allowlist = serializers.ListField(
        child=serializers.CharField(max_length=64, allow_blank=False), max_length=100, required=False,
        help_text="Private Creator values whose blocks are kept (Retain Safe Private Option).")
    keep_pseudonym_map = serializers.BooleanField(
        required=False, help_text="Keep the encrypted pseudonym -> original map (privacy officers read it); "
                                  "set by the vendor organisation's administrators only.")
    is_deid_frozen = serializers.SerializerMethodField(
        help_text="True once a study is ingested: the de-identification options can no longer change.")

    class Meta:
        model = Project
        fields = ["lease_seconds", "max_open_reads", "higher_tiers_take_lower_work", "requires_calibration",
                  "gold_rate", "gold_threshold", "gold_window", "calibration_threshold",
                  "deid_retain_modified_dates", "deid_retain_patient_characteristics", "deid_clean_descriptors",
                  "deid_retain_device_identity", "deid_private_creator_allowlist", "keep_pseudonym_map",
                  "is_deid_frozen"]
        extra_kwargs = {name: {"required": False} for name in fields}

    def get_is_deid_frozen(self, project) -> bool:
        return is_deid_frozen(project)


class MembershipSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username", read_only=True)
    pseudonym = serializers.CharField(source="user.pseudonym", read_only=True)
    tier = serializers.SerializerMethodField()

    class Meta:
        model = Membership
        fields = ["id", "project", "user", "username", "pseudonym", "role", "tier", "subspecialties", "is_active",
                  "is_suspended", "suspension_reason", "calibrated_at", "created_at", "updated_at"]
        read_only_fields = fields

    def get_tier(self, membership) -> str | None:
        tier = membership.tier
        return tier.label if tier is not None else None


class MembershipCreateSerializer(serializers.Serializer):
    # An id, not a related field: whether it exists is the service's to answer, the same way for a
    # missing person as for one out of the caller's reach.
    user = serializers.IntegerField(help_text="A person of the project's vendor or client organisation.")
    role = serializers.ChoiceField(Role.choices)
    subspecialties = serializers.ListField(child=serializers.ChoiceField(Subspecialty.choices), default=list)


class MembershipUpdateSerializer(serializers.Serializer):
    subspecialties = serializers.ListField(child=serializers.ChoiceField(Subspecialty.choices), required=False)
    is_active = serializers.BooleanField(required=False)
    is_suspended = serializers.BooleanField(required=False, help_text="false reinstates a suspended reader.")


class CategorySerializer(serializers.Serializer):
    value = serializers.CharField(max_length=32)
    meaning = serializers.CharField(max_length=200, required=False, allow_blank=True)
    coding_scheme = serializers.CharField(max_length=10, required=False, allow_blank=True)
    code_value = serializers.CharField(max_length=64, required=False, allow_blank=True)
    code_meaning = serializers.CharField(max_length=200, required=False, allow_blank=True)


class LabelEntrySerializer(serializers.ModelSerializer):
    categories = CategorySerializer(many=True, required=False)

    class Meta:
        model = LabelEntry
        fields = ["key", "display_name", "kind", "categories", "unit", "coding_scheme", "code_value", "code_meaning"]
        extra_kwargs = {"unit": {"required": False}}
        # Uniqueness of keys is checked by core.protocols.validate_entries with a clear message.
        validators = []


@extend_schema_field(PROTOCOL_RULES_SCHEMA)
class RulesField(serializers.DictField):
    """A protocol version's rules: an object here, its keys checked by core.protocols.validate_rules."""


class ProtocolVersionSerializer(serializers.ModelSerializer):
    entries = LabelEntrySerializer(many=True, read_only=True)
    rules = RulesField(read_only=True)
    is_locked = serializers.BooleanField(read_only=True)

    class Meta:
        model = ProtocolVersion
        fields = ["id", "project", "number", "name", "notes", "rules", "entries", "is_locked", "used_at",
                  "created_at"]
        read_only_fields = fields


class ProtocolVersionCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    notes = serializers.CharField(required=False, allow_blank=True)
    rules = RulesField(required=False)
    entries = LabelEntrySerializer(many=True, required=False)
    template = serializers.CharField(required=False, help_text="Key of a shipped schema template.")

    def validate(self, attrs):
        if "entries" in attrs and "template" in attrs:
            raise serializers.ValidationError({"template": ["Give entries or a template, not both."]})
        return attrs


class ProtocolVersionUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200, required=False)
    notes = serializers.CharField(required=False, allow_blank=True)
    rules = RulesField(required=False)
    entries = LabelEntrySerializer(many=True, required=False)


class SchemaTemplateSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    modalities = serializers.ListField(child=serializers.CharField())
    entries = LabelEntrySerializer(many=True)


class TokenRequestSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=200, style={"input_type": "password"})


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()
    expiry = serializers.DateTimeField()
    user = UserSerializer()


class MeSerializer(serializers.Serializer):
    user = UserSerializer()
    memberships = MembershipSerializer(many=True)
