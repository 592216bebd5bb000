"""naiad.config: parsing, JSON forms, platform filling, normalisation, validation, versions.

The example configs are model-config.md §8 and Triton's example repositories (§9 and
scheduling.md §9), written inline.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from naiad.config import (
    PLATFORM_BACKENDS,
    ConfigError,
    ModelConfig,
    ModelInstanceGroup,
    ModelVersionPolicy,
    fill_platform_backend,
    guess_platform_from_files,
    model_config_from_json,
    model_config_pb2,
    model_config_to_json,
    normalize_model_config,
    parse_model_config,
    select_versions,
    validate_model_config,
)
from naiad.errors import ModelLoadError

# --- model-config.md §8 ---------------------------------------------------------------------

MLP = """
name: "mlp"
backend: "onnxruntime"
max_batch_size: 32
input  [ { name: "x", data_type: TYPE_FP32, dims: [ 16 ] } ]
output [ { name: "y", data_type: TYPE_FP32, dims: [ 16 ] } ]
instance_group [ { kind: KIND_CPU, count: 2 } ]
dynamic_batching {
  preferred_batch_size: [ 8, 32 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 256, timeout_action: REJECT, default_timeout_microseconds: 100000, allow_timeout_override: true }
}
version_policy: { latest: { num_versions: 2 } }
"""

NON_BATCHING = """
platform: "pytorch_libtorch"
max_batch_size: 0
input  [ { name: "INPUT__0", data_type: TYPE_FP32, dims: [ 3, -1, -1 ] } ]
output [ { name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ 1000 ], label_filename: "labels.txt" } ]
"""

SCALAR_RESHAPE = """
max_batch_size: 8
input [ { name: "in", data_type: TYPE_INT32, dims: [ 1 ], reshape: { shape: [ ] } } ]
"""

SEQUENCE_OLDEST = """
max_batch_size: 4
sequence_batching {
  max_sequence_idle_microseconds: 5000000
  oldest { max_candidate_sequences: 8, preferred_batch_size: [ 4 ], max_queue_delay_microseconds: 1000 }
  control_input [
    { name: "START",  control [ { kind: CONTROL_SEQUENCE_START, int32_false_true: [ 0, 1 ] } ] },
    { name: "END",    control [ { kind: CONTROL_SEQUENCE_END,   int32_false_true: [ 0, 1 ] } ] },
    { name: "READY",  control [ { kind: CONTROL_SEQUENCE_READY, int32_false_true: [ 0, 1 ] } ] },
    { name: "CORRID", control [ { kind: CONTROL_SEQUENCE_CORRID, data_type: TYPE_UINT64 } ] }
  ]
}
"""

ENSEMBLE = """
platform: "ensemble"
max_batch_size: 8
input  [ { name: "RAW",   data_type: TYPE_STRING, dims: [ 1 ] } ]
output [ { name: "SCORES", data_type: TYPE_FP32, dims: [ 10 ] } ]
ensemble_scheduling { step [
  { model_name: "prep",  model_version: -1, input_map { key: "IN",  value: "RAW" },  output_map { key: "OUT", value: "feat" } },
  { model_name: "clf",   model_version: -1, input_map { key: "x",   value: "feat" }, output_map { key: "y",   value: "SCORES" } }
] }
"""

# --- Triton's example repository (docs/examples/model_repository) ---------------------------


def _simple(name: str, dtype: str) -> str:
    return f"""
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {{ name: "INPUT0" data_type: {dtype} dims: [ 16 ] }},
  {{ name: "INPUT1" data_type: {dtype} dims: [ 16 ] }}
]
output [
  {{ name: "OUTPUT0" data_type: {dtype} dims: [ 16 ] }},
  {{ name: "OUTPUT1" data_type: {dtype} dims: [ 16 ] }}
]
"""


SIMPLE_IDENTITY = """
name: "simple_identity"
backend: "python"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ -1 ] } ]
"""

_CONTROL = (
    '{{ name: "{0}" control [ {{ kind: CONTROL_SEQUENCE_{0} int32_false_true: [ 0, 1 ] }} ] }}'
)

SIMPLE_SEQUENCE = f"""
name: "simple_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  control_input [ {_CONTROL.format("START")}, {_CONTROL.format("READY")} ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU }} ]
"""

SIMPLE_DYNA_SEQUENCE = f"""
name: "simple_dyna_sequence"
platform: "onnxruntime_onnx"
max_batch_size: 8
sequence_batching {{
  max_sequence_idle_microseconds: 10000000
  oldest {{ max_candidate_sequences: 1024 max_queue_delay_microseconds: 10000 }}
  control_input [
    {_CONTROL.format("START")}, {_CONTROL.format("END")}, {_CONTROL.format("READY")},
    {{ name: "CORRID" control [ {{ kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 }} ] }}
  ]
}}
input [ {{ name: "INPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
output [ {{ name: "OUTPUT" data_type: TYPE_INT32 dims: [ 1 ] }} ]
instance_group [ {{ count: 2 kind: KIND_CPU }} ]
parameters {{ key: "execute_delay_ms" value: {{ string_value: "3" }} }}
"""

DENSENET_ONNX = """
name: "densenet_onnx"
platform: "onnxruntime_onnx"
max_batch_size : 0
input [
  {
    name: "data_0"
    data_type: TYPE_FP32
    format: FORMAT_NCHW
    dims: [ 3, 224, 224 ]
    reshape { shape: [ 1, 3, 224, 224 ] }
  }
]
output [
  {
    name: "fc6_1"
    data_type: TYPE_FP32
    dims: [ 1000 ]
    reshape { shape: [ 1, 1000, 1, 1 ] }
    label_filename: "densenet_labels.txt"
  }
]
"""

INCEPTION_ONNX = """
name: "inception_onnx"
platform: "onnxruntime_onnx"
max_batch_size: 0
input [ { name: "input:0" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 299, 299, 3 ] } ]
output [
  { name: "InceptionV3/Predictions/Softmax:0" data_type: TYPE_FP32 dims: [ 1001 ]
    label_filename: "inception_labels.txt" }
]
"""

# --- Triton's ensemble example repository (seed, scheduling.md §9) --------------------------

IMAGE_PREPROCESS = """
name: "image_preprocess_nchw_3x224x224_inception"
platform: "custom"
max_batch_size: 128
default_model_filename: "libimagepreprocess.so"
input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] } ]
parameters [
  { key: "format" value: { string_value: "NCHW" } },
  { key: "scaling" value: { string_value: "INCEPTION" } }
]
instance_group [ { kind: KIND_CPU } ]
"""

RESNET50_NETDEF = """
name: "resnet50_netdef"
platform: "caffe2_netdef"
max_batch_size: 128
input [ { name: "gpu_0/data" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] } ]
output [
  { name: "gpu_0/softmax" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "resnet50_labels.txt" }
]
instance_group [ { count: 4 kind: KIND_GPU } ]
"""

PREPROCESS_RESNET50_ENSEMBLE = """
name: "preprocess_resnet50_ensemble"
platform: "ensemble"
max_batch_size: 128
input [ { name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "OUTPUT" data_type: TYPE_FP32 dims: [ 1000 ] } ]
ensemble_scheduling {
  step [
    {
      model_name: "image_preprocess_nchw_3x224x224_inception"
      model_version: -1
      input_map { key: "INPUT" value: "INPUT" }
      output_map { key: "OUTPUT" value: "preprocessed_image" }
    },
    {
      model_name: "resnet50_netdef"
      model_version: -1
      input_map { key: "gpu_0/data" value: "preprocessed_image" }
      output_map { key: "gpu_0/softmax" value: "OUTPUT" }
    }
  ]
}
"""

# A config that sets every field of model-config.md §6 at least once.
EVERY_FIELD = """
name: "everything"
platform: "tensorrt_plan"
backend: "tensorrt"
runtime: "libtriton_tensorrt.so"
version_policy { specific { versions: [ 1, 3 ] } }
max_batch_size: 8
input [ { name: "IN" data_type: TYPE_BF16 format: FORMAT_NCHW dims: [ 3, -1, -1 ]
          reshape { shape: [ 3, -1, -1 ] } is_shape_tensor: false allow_ragged_batch: true
          optional: true is_non_linear_format_io: true } ]
output [ { name: "OUT" data_type: TYPE_FP16 dims: [ 10 ] reshape { shape: [ 2, 5 ] }
           label_filename: "labels.txt" is_shape_tensor: false is_non_linear_format_io: false } ]
batch_input [ { kind: BATCH_ITEM_SHAPE_FLATTEN target_name: [ "SHAPES" ] data_type: TYPE_INT32
                source_input: [ "IN" ] } ]
batch_output [ { target_name: [ "OUT" ] kind: BATCH_SCATTER_WITH_INPUT_SHAPE source_input: [ "IN" ] } ]
optimization {
  graph { level: 1 }
  priority: PRIORITY_MAX
  cuda {
    graphs: true busy_wait_events: true output_copy_stream: true
    graph_spec [ { batch_size: 4 input { key: "IN" value { dim: [ 3, 8, 8 ] } }
                   graph_lower_bound { batch_size: 1 input { key: "IN" value { dim: [ 3, 1, 1 ] } } } } ]
  }
  execution_accelerators {
    gpu_execution_accelerator [ { name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ]
    cpu_execution_accelerator [ { name: "openvino" } ]
  }
  input_pinned_memory { enable: false }
  output_pinned_memory { enable: true }
  gather_kernel_buffer_threshold: 4
  eager_batching: true
}
sequence_batching {
  max_sequence_idle_microseconds: 7
  control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START bool_false_true: [ false, true ] } ] },
                  { name: "R" control [ { kind: CONTROL_SEQUENCE_READY fp32_false_true: [ 0, 1 ] } ] },
                  { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_STRING } ] } ]
  direct { max_queue_delay_microseconds: 5 minimum_slot_utilization: 0.5 }
  state [ { input_name: "SIN" output_name: "SOUT" data_type: TYPE_FP32 dims: [ 4 ]
            initial_state [ { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true name: "zeros" } ]
            use_same_buffer_for_input_output: true use_growable_memory: true } ]
  iterative_sequence: false
}
instance_group [ {
  name: "group" kind: KIND_GPU count: 2 gpus: [ 0 ] profile: [ "0", "1" ] passive: false
  host_policy: "policy"
  rate_limiter { resources [ { name: "R1" global: true count: 2 } ] priority: 1 }
  secondary_devices [ { kind: KIND_NVDLA device_id: 1 } ]
} ]
default_model_filename: "model.plan"
cc_model_filenames { key: "7.5" value: "model_75.plan" }
metric_tags { key: "team" value: "a" }
parameters { key: "k" value { string_value: "v" } }
model_warmup [ { name: "w" batch_size: 1 count: 2
                 inputs { key: "IN" value { data_type: TYPE_BF16 dims: [ 3, 8, 8 ] random_data: true } } } ]
model_operations { op_library_filename: [ "libops.so" ] }
model_transaction_policy { decoupled: true }
model_repository_agents { agents [ { name: "checksum" parameters { key: "MD5:1/model.plan" value: "x" } } ] }
response_cache { enable: false }
model_metrics { metric_control [ { metric_identifier { family: "nv_inference_first_response_histogram_ms" }
                                   histogram_options { buckets: [ 1, 2.5, 10 ] } } ] }
"""

# Ensemble steps of the dynamic-batching example in model-config.md §6 (ModelEnsembling).
ENSEMBLE_WITH_LIMIT = """
platform: "ensemble"
input [ { name: "A" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "B" data_type: TYPE_INT32 dims: [ 1 ] } ]
ensemble_scheduling { max_inflight_requests: 4 step [ { model_name: "m" model_version: 2
  model_namespace: "ns" input_map { key: "x" value: "A" } output_map { key: "y" value: "B" } } ] }
"""

REPOSITORY = {
    "simple": (_simple("simple", "TYPE_INT32"), 0),
    "simple_int8": (_simple("simple_int8", "TYPE_INT8"), 0),
    "simple_string": (_simple("simple_string", "TYPE_STRING"), 0),
    "simple_identity": (SIMPLE_IDENTITY, 0),
    "simple_sequence": (SIMPLE_SEQUENCE, 0),
    "simple_dyna_sequence": (SIMPLE_DYNA_SEQUENCE, 0),
    "densenet_onnx": (DENSENET_ONNX, 0),
    "inception_onnx": (INCEPTION_ONNX, 0),
    "image_preprocess_nchw_3x224x224_inception": (IMAGE_PREPROCESS, 0),
    "resnet50_netdef": (RESNET50_NETDEF, 1),
    "preprocess_resnet50_ensemble": (PREPROCESS_RESNET50_ENSEMBLE, 0),
    "mlp": (MLP, 0),
    "torch": (NON_BATCHING, 0),
    "ens": (ENSEMBLE, 0),
    "ens_limit": (ENSEMBLE_WITH_LIMIT, 0),
}


def _effective(text: str, name: str, *, gpu_count: int = 0, **kwargs: object) -> ModelConfig:
    """Parse, fill, normalise and validate, as a loader does."""
    config = parse_model_config(text, model_name=name)
    fill_platform_backend(config)
    normalize_model_config(config, model_name=name, gpu_count=gpu_count, **kwargs)  # type: ignore[arg-type]
    validate_model_config(config)
    return config


@pytest.mark.parametrize("name", sorted(REPOSITORY))
def test_example_configs_load(name: str) -> None:
    text, gpu_count = REPOSITORY[name]
    config = _effective(text, name, gpu_count=gpu_count)
    assert config.name == name
    assert config.version_policy.WhichOneof("policy_choice") is not None


@pytest.mark.parametrize("text", [SCALAR_RESHAPE, SEQUENCE_OLDEST, EVERY_FIELD])
def test_partial_example_configs_parse(text: str) -> None:
    config = parse_model_config(text, model_name="m")
    assert config.max_batch_size in (4, 8)


def test_every_field_parses_and_round_trips() -> None:
    config = parse_model_config(EVERY_FIELD, model_name="everything")
    assert config.optimization.cuda.graph_spec[0].graph_lower_bound.input["IN"].dim == [3, 1, 1]
    assert (
        config.sequence_batching.state[0].initial_state[0].WhichOneof("state_data") == "zero_data"
    )
    assert config.model_warmup[0].inputs["IN"].WhichOneof("input_data_type") == "random_data"
    assert list(config.model_metrics.metric_control[0].histogram_options.buckets) == [1, 2.5, 10]
    as_json = model_config_to_json(config)
    assert model_config_from_json(json.dumps(as_json)) == config
    instance_group = as_json["instance_group"][0]
    assert instance_group["secondary_devices"] == [{"kind": "KIND_NVDLA", "device_id": 1}]
    assert as_json["optimization"]["cuda"]["graph_spec"][0]["input"]["IN"]["dim"] == [3, 8, 8]
    assert as_json["sequence_batching"]["max_sequence_idle_microseconds"] == 7
    assert as_json["sequence_batching"]["state"][0]["initial_state"][0]["dims"] == [4]


def test_every_field_validates() -> None:
    config = parse_model_config(EVERY_FIELD, model_name="everything")
    config.model_transaction_policy.decoupled = False
    normalize_model_config(config, model_name="everything", gpu_count=1)
    validate_model_config(config)
    assert not config.optimization.input_pinned_memory.enable  # explicit false is kept


# --- the generated module -------------------------------------------------------------------


def test_field_numbers_match_the_reference() -> None:
    numbers = {f.name: f.number for f in ModelConfig.DESCRIPTOR.fields}
    assert numbers == {
        "name": 1, "platform": 2, "backend": 17, "runtime": 25, "version_policy": 3,
        "max_batch_size": 4, "input": 5, "output": 6, "batch_input": 20, "batch_output": 21,
        "optimization": 12, "dynamic_batching": 11, "sequence_batching": 13,
        "ensemble_scheduling": 15, "instance_group": 7, "default_model_filename": 8,
        "cc_model_filenames": 9, "metric_tags": 10, "parameters": 14, "model_warmup": 16,
        "model_operations": 18, "model_transaction_policy": 19, "model_repository_agents": 23,
        "response_cache": 24, "model_metrics": 26,
    }  # fmt: skip
    assert ModelConfig.DESCRIPTOR.file.package == "naiad.inference"
    assert ModelConfig.DESCRIPTOR.file.name == "naiad/config/model_config.proto"
    assert model_config_pb2.DataType.Value("TYPE_BF16") == 14


def _load_tritonclient_model_config() -> object:
    """tritonclient's generated model_config_pb2, loaded without its grpc package."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tritonclient is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        pytest.skip("tritonclient has no grpc/model_config_pb2.py")
    module_spec = importlib.util.spec_from_file_location("_tritonclient_model_config_pb2", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # e.g. its gencode needs a newer protobuf runtime
        pytest.skip(f"cannot load tritonclient's model_config_pb2: {err}")
    return module


def _schema(descriptor: object, prefix: str = "") -> set[tuple[object, ...]]:
    """Every (message, field, number, type, repeated, type name, oneof) and enum value."""
    out: set[tuple[object, ...]] = set()
    name = prefix + descriptor.name  # type: ignore[attr-defined]
    for f in descriptor.fields:  # type: ignore[attr-defined]
        ref = f.message_type or f.enum_type
        type_name = ref.full_name.split(".inference.")[-1].removeprefix("inference.") if ref else ""
        oneof = f.containing_oneof.name if f.containing_oneof else ""
        repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
        out.add((name, f.name, f.number, f.type, repeated, type_name, oneof))
    for enum in descriptor.enum_types:  # type: ignore[attr-defined]
        out.update((f"{name}.{enum.name}", v.name, v.number) for v in enum.values)
    for nested in descriptor.nested_types:  # type: ignore[attr-defined]
        out |= _schema(nested, f"{name}.")
    return out


def test_schema_matches_tritonclient_and_coexists_with_it() -> None:
    triton = _load_tritonclient_model_config()
    theirs: set[tuple[object, ...]] = set()
    ours: set[tuple[object, ...]] = set()
    for file, into in ((triton.DESCRIPTOR, theirs), (model_config_pb2.DESCRIPTOR, ours)):  # type: ignore[attr-defined]
        for message in file.message_types_by_name.values():
            into |= _schema(message)
        for enum in file.enum_types_by_name.values():
            into.update((enum.name, v.name, v.number) for v in enum.values)
    assert ours == theirs


# --- text and JSON forms --------------------------------------------------------------------


def test_syntax_error_is_config_error_with_line_and_column() -> None:
    text = 'name: "m"\nmax_batch_size: 8\ninput [ { nmae: "x" } ]\n'
    with pytest.raises(ConfigError) as info:
        parse_model_config(text, model_name="m")
    message = str(info.value)
    assert "model 'm'" in message and "line 3, column 11" in message and "nmae" in message
    assert isinstance(info.value, ModelLoadError)
    with pytest.raises(ConfigError, match="line 1"):
        parse_model_config("max_batch_size: {", model_name="m")


def test_unknown_enum_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="TYPE_FLOAT"):
        parse_model_config('input [ { name: "x" data_type: TYPE_FLOAT } ]', model_name="m")


def test_simple_json_matches_the_triton_shape() -> None:
    config = parse_model_config(_simple("simple", "TYPE_INT32"), model_name="simple")
    fill_platform_backend(config)
    normalize_model_config(config, model_name="simple", gpu_count=0)
    validate_model_config(config)
    got = model_config_to_json(config)
    # http-v2.md §12, with the trimmed "..." filled in.
    input_ = {
        "data_type": "TYPE_INT32", "format": "FORMAT_NONE", "dims": [16],
        "is_shape_tensor": False, "allow_ragged_batch": False, "optional": False,
        "is_non_linear_format_io": False,
    }  # fmt: skip
    output = {
        "data_type": "TYPE_INT32", "dims": [16], "label_filename": "",
        "is_shape_tensor": False, "is_non_linear_format_io": False,
    }  # fmt: skip
    expected = {
        "name": "simple", "platform": "onnxruntime_onnx", "backend": "onnxruntime", "runtime": "",
        "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 8,
        "input": [{"name": "INPUT0", **input_}, {"name": "INPUT1", **input_}],
        "output": [{"name": "OUTPUT0", **output}, {"name": "OUTPUT1", **output}],
        "batch_input": [], "batch_output": [],
        "optimization": {
            "priority": "PRIORITY_DEFAULT", "input_pinned_memory": {"enable": True},
            "output_pinned_memory": {"enable": True}, "gather_kernel_buffer_threshold": 0,
            "eager_batching": False,
        },
        "instance_group": [{
            "name": "simple", "kind": "KIND_CPU", "count": 1, "gpus": [],
            "secondary_devices": [], "profile": [], "passive": False, "host_policy": "",
        }],
        "default_model_filename": "model.onnx", "cc_model_filenames": {}, "metric_tags": {},
        "parameters": {}, "model_warmup": [],
    }  # fmt: skip
    assert got == expected
    assert list(got) == list(expected)  # Triton's (declaration) order
    assert list(got["input"][0]) == ["name", *input_]


def test_json_numbers_stay_numbers_and_strings_stay_strings() -> None:
    config = ModelConfig(name="16", max_batch_size=4)
    config.input.add(name="8", data_type=model_config_pb2.TYPE_FP32, dims=[-1, 3])
    config.dynamic_batching.max_queue_delay_microseconds = 2**40
    config.dynamic_batching.priority_levels = 2
    config.dynamic_batching.priority_queue_policy[2].default_timeout_microseconds = 9
    config.version_policy.specific.versions.extend([1, 3])
    config.parameters["n"].string_value = "32"
    got = model_config_to_json(config)
    assert got["name"] == "16" and got["input"][0]["name"] == "8"
    assert got["input"][0]["dims"] == [-1, 3]
    assert got["dynamic_batching"]["max_queue_delay_microseconds"] == 2**40
    assert got["dynamic_batching"]["priority_levels"] == 2
    assert got["dynamic_batching"]["priority_queue_policy"] == {
        "2": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": 9,
            "allow_timeout_override": False,
            "max_queue_size": 0,
        }
    }
    assert got["version_policy"] == {"specific": {"versions": [1, 3]}}
    assert got["parameters"] == {"n": {"string_value": "32"}}
    assert "sequence_batching" not in got and "ensemble_scheduling" not in got
    assert model_config_from_json(json.dumps(got)) == config  # plain JSON types, round trip


def test_json_override_accepts_string_ints_and_camel_case() -> None:
    config = model_config_from_json(
        '{"max_batch_size":"16","input":[{"name":"x","data_type":"TYPE_FP32","dims":["-1","3"]}],'
        '"dynamicBatching":{"maxQueueDelayMicroseconds":"100"},'
        '"instance_group":[{"kind":"KIND_CPU","count":2}]}'
    )
    assert config.max_batch_size == 16
    assert list(config.input[0].dims) == [-1, 3]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == ModelInstanceGroup.KIND_CPU
    from_dict = model_config_from_json({"max_batch_size": 16, "backend": "onnxruntime"})
    assert from_dict.max_batch_size == 16 and from_dict.backend == "onnxruntime"


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ('{"max_batch_size": 8,', "failed to parse the JSON configuration"),
        ("[1, 2]", "must be an object"),
        ('{"max_batch_sise": 8}', "max_batch_sise"),
        ('{"max_batch_size": "eight"}', "max_batch_size"),
        ('{"input": [{"data_type": "TYPE_FLOAT"}]}', "TYPE_FLOAT"),
    ],
)
def test_json_override_errors(data: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment) as info:
        model_config_from_json(data, model_name="m")
    assert isinstance(info.value, ModelLoadError)


# --- platform and backend -------------------------------------------------------------------


def test_platform_backend_table() -> None:
    assert PLATFORM_BACKENDS["onnxruntime_onnx"] == "onnxruntime"
    assert PLATFORM_BACKENDS["libtorch"] == PLATFORM_BACKENDS["torch_aoti"] == "pytorch"
    assert PLATFORM_BACKENDS["tensorflow_savedmodel"] == "tensorflow"
    assert PLATFORM_BACKENDS["ensemble"] == ""
    with pytest.raises(TypeError):
        PLATFORM_BACKENDS["x"] = "y"  # type: ignore[index]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"platform": "onnxruntime_onnx"}, ("onnxruntime_onnx", "onnxruntime", "model.onnx")),
        (
            {"platform": "tensorflow_graphdef"},
            ("tensorflow_graphdef", "tensorflow", "model.graphdef"),
        ),
        ({"backend": "onnxruntime"}, ("onnxruntime_onnx", "onnxruntime", "model.onnx")),
        ({"backend": "tensorrt"}, ("tensorrt_plan", "tensorrt", "model.plan")),
        ({"backend": "pytorch"}, ("pytorch_libtorch", "pytorch", "model.pt")),
        ({"backend": "python"}, ("", "python", "model.py")),
        ({"backend": "mine"}, ("", "mine", "")),
        ({"platform": "ensemble"}, ("ensemble", "", "")),
        (
            {"default_model_filename": "model.savedmodel"},
            ("tensorflow_savedmodel", "tensorflow", "model.savedmodel"),
        ),
        (
            {"backend": "tensorflow", "default_model_filename": "model.graphdef"},
            ("tensorflow_graphdef", "tensorflow", "model.graphdef"),
        ),
        ({"backend": "pytorch", "runtime": "model.py"}, ("pytorch_libtorch", "pytorch", "")),
        (
            {"platform": "pytorch_libtorch", "backend": "python"},
            ("pytorch_libtorch", "python", "model.pt"),
        ),
    ],
)
def test_fill_platform_backend(given: dict[str, str], expected: tuple[str, str, str]) -> None:
    config = ModelConfig(name="m", **given)
    fill_platform_backend(config)
    assert (config.platform, config.backend, config.default_model_filename) == expected


@pytest.mark.parametrize(
    "given",
    [
        {"platform": "onnxruntime_onnx", "backend": "pytorch"},
        {"platform": "tensorflow_savedmodel", "backend": "onnxruntime"},
        {"platform": "whatever", "backend": "onnxruntime"},
        {"backend": "tensorflow"},  # platform not derivable: Triton's "got:, tensorflow"
    ],
)
def test_platform_backend_mismatch(given: dict[str, str]) -> None:
    config = ModelConfig(name="m", **given)
    with pytest.raises(ConfigError, match="unexpected 'platform' and 'backend' pair"):
        fill_platform_backend(config)


def test_ensemble_with_backend_is_rejected() -> None:
    config = ModelConfig(name="e", platform="ensemble", backend="python")
    with pytest.raises(ConfigError, match="must have platform type 'ensemble' and empty backend"):
        fill_platform_backend(config)


@pytest.mark.parametrize(
    ("files", "dirs", "expected"),
    [
        ([], ["model.savedmodel"], ("tensorflow_savedmodel", "tensorflow")),
        (["model.graphdef"], [], ("tensorflow_graphdef", "tensorflow")),
        (["model.plan"], [], ("tensorrt_plan", "tensorrt")),
        (["model.onnx"], [], ("onnxruntime_onnx", "onnxruntime")),
        ([], ["model.onnx"], ("onnxruntime_onnx", "onnxruntime")),
        (["model.pt"], [], ("pytorch_libtorch", "pytorch")),
        (["model.pt2"], [], ("torch_aoti", "pytorch")),
        (["model.py"], [], ("", "python")),
        (["model.netdef", "init_model.netdef"], [], ("caffe2_netdef", "caffe2")),
        (["model.savedmodel"], [], None),  # a file is not a SavedModel
        (["notes.txt"], [], None),
    ],
)
def test_guess_platform_from_files(
    tmp_path: Path, files: list[str], dirs: list[str], expected: tuple[str, str] | None
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"")
    for name in dirs:
        (tmp_path / name).mkdir()
    assert guess_platform_from_files(tmp_path) == expected
    assert guess_platform_from_files(tmp_path / "missing") is None


def test_fill_from_version_directory(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    config = ModelConfig(name="m")
    fill_platform_backend(config, tmp_path)
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "onnxruntime")


# --- normalisation --------------------------------------------------------------------------


def test_normalize_defaults_on_cpu() -> None:
    config = parse_model_config(
        'backend: "onnxruntime" max_batch_size: 8 dynamic_batching { }', model_name="m"
    )
    normalize_model_config(config, model_name="m", default_instance_count=2)
    assert config.name == "m"
    assert config.version_policy.latest.num_versions == 1
    assert list(config.dynamic_batching.preferred_batch_size) == [8]
    assert config.optimization.input_pinned_memory.enable
    assert config.optimization.output_pinned_memory.enable
    [group] = config.instance_group
    assert (group.name, group.kind, group.count, list(group.gpus)) == (
        "m", ModelInstanceGroup.KIND_CPU, 2, [],
    )  # fmt: skip


def test_normalize_preferred_batch_size_needs_max_batch_size() -> None:
    config = parse_model_config("max_batch_size: 0 dynamic_batching { }", model_name="m")
    normalize_model_config(config, model_name="m")
    assert list(config.dynamic_batching.preferred_batch_size) == []


def test_normalize_sequence_defaults() -> None:
    config = parse_model_config(
        "max_batch_size: 4 sequence_batching { oldest { } }", model_name="m"
    )
    normalize_model_config(config, model_name="m")
    assert config.sequence_batching.max_sequence_idle_microseconds == 1_000_000
    assert list(config.sequence_batching.oldest.preferred_batch_size) == [4]
    kept = parse_model_config(SEQUENCE_OLDEST, model_name="m")
    normalize_model_config(kept, model_name="m")
    assert kept.sequence_batching.max_sequence_idle_microseconds == 5_000_000


def test_normalize_instance_groups_with_gpus() -> None:
    config = parse_model_config(
        "instance_group [ { count: 0 }, { kind: KIND_GPU gpus: [ 1 ] count: 3 },"
        ' { name: "mine" kind: KIND_CPU }, { gpus: [ 5 ] } ]',
        model_name="m",
    )
    normalize_model_config(config, model_name="m", gpu_count=2, default_instance_count=2)
    got = [
        (g.name, ModelInstanceGroup.Kind.Name(g.kind), g.count, list(g.gpus))
        for g in config.instance_group
    ]
    assert got == [
        ("m_0", "KIND_GPU", 1, [0, 1]),
        ("m_1", "KIND_GPU", 3, [1]),
        ("mine", "KIND_CPU", 2, []),
        ("m_3", "KIND_CPU", 2, [5]),  # a listed GPU is absent: KIND_AUTO falls back to CPU
    ]


def test_normalize_preferred_kind() -> None:
    on_gpu = ModelConfig()
    normalize_model_config(on_gpu, model_name="m", gpu_count=1, preferred_kind="KIND_MODEL")
    assert on_gpu.instance_group[0].kind == ModelInstanceGroup.KIND_MODEL
    no_gpu = ModelConfig()
    normalize_model_config(no_gpu, model_name="m", gpu_count=0, preferred_kind="KIND_GPU")
    assert no_gpu.instance_group[0].kind == ModelInstanceGroup.KIND_CPU


def test_normalize_gpu_group_without_gpus() -> None:
    config = parse_model_config("instance_group [ { kind: KIND_GPU } ]", model_name="m")
    with pytest.raises(
        ConfigError, match="instance group m_0 of model m has kind KIND_GPU but no GPUs"
    ):
        normalize_model_config(config, model_name="m", gpu_count=0)
    listed = parse_model_config("instance_group [ { kind: KIND_GPU gpus: [ 2 ] } ]", model_name="m")
    with pytest.raises(ConfigError, match="of model m specifies invalid or unsupported gpu id 2"):
        normalize_model_config(listed, model_name="m", gpu_count=2)


def test_normalize_name_mismatch() -> None:
    config = ModelConfig(name="other")
    with pytest.raises(ConfigError, match="unexpected directory name 'm' for model 'other'"):
        normalize_model_config(config, model_name="m")


def test_normalize_ensemble_gets_no_instances_or_optimization() -> None:
    config = parse_model_config(ENSEMBLE, model_name="e")
    normalize_model_config(config, model_name="e", gpu_count=1)
    assert not config.instance_group
    assert not config.HasField("optimization")


# --- validation -----------------------------------------------------------------------------

_IO = 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ] output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ] '
_SEQ = "max_batch_size: 4 " + _IO + "sequence_batching { %s }"
_CTL = 'control_input [ { name: "S" control [ { kind: CONTROL_SEQUENCE_START %s } ] } ]'


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("max_batch_size: -1 " + _IO, "'max_batch_size' must be non-negative value for m"),
        (
            'input [ { name: "x" data_type: TYPE_FP32 } ]',
            "model input 'x' must specify 'dims' for m",
        ),
        ('input [ { name: "x" dims: [ 1 ] } ]', "model input 'x' must specify 'data_type' for m"),
        (
            "output [ { data_type: TYPE_FP32 dims: [ 1 ] } ]",
            "model output must specify 'name' for m",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]',
            "dimension must be integer >= 1, or -1",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ -2 ] } ]',
            "'x' dimension must be integer >= 1",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 0 ] } } ]',
            "reshape dimensions must be integer",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape { shape: [ 3 ] } } ]',
            "'x' has different size for dims and reshape for m",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, -1 ] reshape { shape: [ -1, 2 ] } } ]',
            "has different size for dims and reshape",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ -1, -1 ] reshape { shape: [ -1 ] } } ]',
            "different number of variable-size dimensions",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] reshape { shape: [ ] } } ]',
            "cannot have empty reshape for non-batching model",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 4 ] } ]',
            "NHWC/NCHW require 3 dims",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] is_shape_tensor: true } ]',
            "shape tensors are only supported for TensorRT",
        ),
        (
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            "model input 'x' is specified more than once for m",
        ),
        (
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]',
            "model output 'y' is specified more than once",
        ),
        (
            "max_batch_size: 8 "
            + _IO
            + 'batch_input [ { target_name: "b" data_type: TYPE_INT32 } ]',
            "expects 1 source input, got 0",
        ),
        (
            "max_batch_size: 8 "
            + _IO
            + 'batch_input [ { target_name: "b" data_type: TYPE_INT64 source_input: "x" } ]',
            "batch input data type must be TYPE_INT32 or TYPE_FP32",
        ),
        (
            "max_batch_size: 8 "
            + _IO
            + 'batch_input [ { target_name: "b" data_type: TYPE_INT32 source_input: "z" } ]',
            "unknown source input name 'z'",
        ),
        (
            "max_batch_size: 8 " + _IO + 'batch_output [ { target_name: "q" source_input: "x" } ]',
            "unknown target output name 'q'",
        ),
        (
            "max_batch_size: 4 " + _IO + "dynamic_batching { preferred_batch_size: [ 8 ] }",
            "dynamic batching preferred size must be <= max batch size for m",
        ),
        (
            "max_batch_size: 4 " + _IO + "dynamic_batching { preferred_batch_size: [ 0 ] }",
            "dynamic batching preferred size must be positive",
        ),
        (
            "max_batch_size: 4 " + _IO + "dynamic_batching { priority_levels: 2 }",
            "default priority level must be in range [1, 2] for m",
        ),
        (
            "max_batch_size: 4 "
            + _IO
            + "dynamic_batching { priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value { } } }",
            "priority queue policy must have priority level in range [1, 2]",
        ),
        (
            "max_batch_size: 4 "
            + _IO
            + "dynamic_batching { preserve_ordering: true priority_levels: 2 default_priority_level: 1 }",
            "Only one priority level is allowed when 'preserve_ordering'",
        ),
        (
            "max_batch_size: 4 "
            + _IO
            + "dynamic_batching { preserve_ordering: true default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 5 } }",
            "can not have DELAY as timeout action",
        ),
        (
            _SEQ % (_CTL % ""),
            "must specify either 'int32_false_true', 'fp32_false_true' or 'bool_false_true' for CONTROL_SEQUENCE_START for m",
        ),
        (
            _SEQ % (_CTL % "int32_false_true: [ 1 ]"),
            "'int32_false_true' must have exactly 2 entries",
        ),
        (
            _SEQ % (_CTL % "int32_false_true: [ 0, 1 ] fp32_false_true: [ 0, 1 ]"),
            "specifies more than one from",
        ),
        (
            _SEQ
            % 'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_FP32 } ] } ]',
            "unexpected data type for control CONTROL_SEQUENCE_CORRID for m",
        ),
        (
            _SEQ
            % 'control_input [ { name: "C" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 int32_false_true: [ 0, 1 ] } ] } ]',
            "must not specify either",
        ),
        (
            _SEQ
            % 'control_input [ { name: "A" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] }, { name: "B" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] } ]',
            "specifies multiple CONTROL_SEQUENCE_END tensors",
        ),
        (
            _SEQ % 'control_input [ { name: "A" }, { name: "A" } ]',
            "control tensor 'A' is specified for multiple control kinds",
        ),
        (
            _SEQ % "oldest { preferred_batch_size: [ 5 ] }",
            "sequence batching preferred batch size must be <= max batch size",
        ),
        (
            _SEQ % "direct { minimum_slot_utilization: 1.5 }",
            "minimum slot utilization must be in range",
        ),
        (
            _IO + "model_transaction_policy { decoupled: true } response_cache { enable: true }",
            "Response Cache does not currently support model m with 'decoupled'",
        ),
        (
            _IO + 'model_metrics { metric_control [ { metric_identifier { family: "f" } } ] }',
            "metric control must specify 'histogram_options'",
        ),
        (
            _IO + "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
            "instance group m_0 of model m has kind KIND_CPU but specifies one or more GPUs",
        ),
        (
            _IO + "instance_group [ { kind: KIND_MODEL gpus: [ 0 ] } ]",
            "has kind KIND_MODEL but specifies one or more GPUs",
        ),
        (
            _IO + 'instance_group [ { kind: KIND_CPU profile: [ "0" ] } ]',
            "specifies profile field which is only supported for TensorRT models",
        ),
    ],
)
def test_validation_errors(text: str, fragment: str) -> None:
    config = parse_model_config('backend: "onnxruntime" ' + text, model_name="m")
    fill_platform_backend(config)
    normalize_model_config(config, model_name="m", gpu_count=1)
    with pytest.raises(ConfigError) as info:
        validate_model_config(config)
    assert fragment in str(info.value)


_STEP = (
    '{ model_name: "%s" input_map { key: "in" value: "%s" } output_map { key: "out" value: "%s" } }'
)
_ENS_IO = 'input [ { name: "A" data_type: TYPE_FP32 dims: [ 1 ] } ] output [ { name: "B" data_type: TYPE_FP32 dims: [ 1 ] } ] '


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            'platform: "ensemble"',
            "ensemble scheduling must be set for ensemble m whose platform is ensemble",
        ),
        (
            'backend: "python" ensemble_scheduling { step [ ' + _STEP % ("a", "A", "B") + " ] }",
            "ensemble scheduling cannot be set for model 'm' whose platform is not ensemble",
        ),
        ('platform: "ensemble" ensemble_scheduling { }', "must specify 'step' for ensemble 'm'"),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + 'ensemble_scheduling { step [ { model_name: "a" } ] }',
            "must specify 'input_map' in step 0 of ensemble 'm'",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + 'ensemble_scheduling { step [ { input_map { key: "i" value: "A" } } ] }',
            "must specify 'model_name' in step 0",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "B")
            + ", "
            + _STEP % ("b", "A", "B")
            + " ] }",
            "ensemble tensor 'B' can appear in an output map only once for ensemble 'm' step 1",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "ensemble_scheduling { step [ "
            + _STEP % ("a", "Z", "B")
            + " ] }",
            "ensemble input 'A' for ensemble 'm' is not used",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "C")
            + " ] }",
            "ensemble output 'B' for ensemble 'm' is not used",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "T")
            + ", "
            + _STEP % ("b", "U", "B")
            + " ] }",
            "output 'B' for ensemble 'm' is not written: at least one of its depending tensors, 'U', is not connected",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "B")
            + ", "
            + _STEP % ("b", "A", "T")
            + " ] }",
            "ensemble tensor 'T' is unused in ensemble 'm'",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "instance_group [ { kind: KIND_CPU } ] ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "B")
            + " ] }",
            "instance group should not be specified for ensemble 'm'",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + 'model_warmup [ { name: "w" } ] ensemble_scheduling { step [ '
            + _STEP % ("a", "A", "B")
            + " ] }",
            "model_warmup can not be specified for ensemble 'm'",
        ),
        (
            'platform: "ensemble" '
            + _ENS_IO
            + "optimization { } ensemble_scheduling { step [ "
            + _STEP % ("a", "A", "B")
            + " ] }",
            "optimization should not be specified for ensemble 'm'",
        ),
    ],
)
def test_ensemble_validation_errors(text: str, fragment: str) -> None:
    config = parse_model_config(text, model_name="m")
    fill_platform_backend(config)
    normalize_model_config(config, model_name="m")
    with pytest.raises(ConfigError) as info:
        validate_model_config(config)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (ModelConfig(), "model configuration must specify 'name'"),
        (ModelConfig(name="m"), "must specify 'platform' or 'backend' for 'm'"),
        (ModelConfig(name="m", platform="mystery"), "unexpected platform type 'mystery' for m"),
        (ModelConfig(name="m", backend="python"), "must specify 'version policy' for m"),
    ],
)
def test_validation_of_unfilled_configs(config: ModelConfig, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        validate_model_config(config)


def test_validation_accepts_dynamic_batching_without_batch_dimension() -> None:
    _effective('backend: "onnxruntime" max_batch_size: 0 ' + _IO + "dynamic_batching { }", "m")


def test_validation_accepts_variable_reshape_runs() -> None:
    text = 'backend: "onnxruntime" input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 4, -1, 6 ] reshape { shape: [ 8, -1, 1, 6 ] } } ]'
    _effective(text, "m")


def test_validation_needs_instance_groups_after_normalisation() -> None:
    config = parse_model_config('name: "m" backend: "python" ' + _IO, model_name="m")
    config.version_policy.all.SetInParent()
    with pytest.raises(ConfigError, match="must specify one or more 'instance group's for m"):
        validate_model_config(config)


# --- version policy -------------------------------------------------------------------------


def _policy(text: str) -> ModelVersionPolicy:
    return parse_model_config(f"version_policy {{ {text} }}", model_name="m").version_policy


def test_select_versions() -> None:
    available = [3, 1, 10, 2]
    assert select_versions(_policy("latest { num_versions: 1 }"), available) == [10]
    assert select_versions(_policy("latest { num_versions: 2 }"), available) == [3, 10]
    assert select_versions(_policy("latest { num_versions: 9 }"), available) == [1, 2, 3, 10]
    assert select_versions(_policy("latest { num_versions: 0 }"), available) == []
    assert select_versions(_policy("all { }"), available) == [1, 2, 3, 10]
    assert select_versions(_policy("specific { versions: [ 10, 4, 1 ] }"), available) == [1, 10]
    assert select_versions(ModelVersionPolicy(), available) == [1, 2, 3, 10]
    assert select_versions(_policy("latest { num_versions: 1 }"), []) == []
