"""``triton_python_backend_utils`` itself: names, values and the checks model code meets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import triton_python_backend_utils as pb_utils


def test_constants_have_tritons_values():
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START == 1
    assert pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END == 2
    assert pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_ALL == 1
    assert pb_utils.TRITONSERVER_REQUEST_RELEASE_RESCHEDULE == 2
    codes = [
        pb_utils.TritonError.UNKNOWN,
        pb_utils.TritonError.INTERNAL,
        pb_utils.TritonError.NOT_FOUND,
        pb_utils.TritonError.INVALID_ARG,
        pb_utils.TritonError.UNAVAILABLE,
        pb_utils.TritonError.UNSUPPORTED,
        pb_utils.TritonError.ALREADY_EXISTS,
        pb_utils.TritonError.CANCELLED,
    ]
    assert codes == list(range(8))


def test_type_tables():
    assert pb_utils.triton_string_to_numpy("TYPE_FP32") is np.float32
    assert pb_utils.triton_string_to_numpy("TYPE_STRING") is np.object_
    with pytest.raises(KeyError):
        pb_utils.triton_string_to_numpy("TYPE_BF16")
    assert pb_utils.numpy_to_triton_type(np.float32) == 11
    assert pb_utils.numpy_to_triton_type(np.bytes_) == 13
    assert pb_utils.triton_to_numpy_type(8) is np.int32
    assert pb_utils.triton_to_numpy_type(99) is None


def test_bytes_codec_round_trip():
    array = np.array([b"ab", "c", b""], dtype=np.object_)
    wire = pb_utils.serialize_byte_tensor(array)
    assert wire == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c\x00\x00\x00\x00"
    assert pb_utils.deserialize_bytes_tensor(wire).tolist() == [b"ab", b"c", b""]
    assert pb_utils.serialize_byte_tensor(np.zeros(2, np.float32)) is None


def test_tensor_checks_and_dlpack():
    with pytest.raises(pb_utils.TritonModelException, match="cannot be an empty string"):
        pb_utils.Tensor("", np.zeros(1))
    with pytest.raises(pb_utils.TritonModelException, match="NumPy dtype is not supported"):
        pb_utils.Tensor("x", np.array(["unicode"]))
    t = pb_utils.Tensor("x", np.arange(6, dtype=np.int64).reshape(2, 3).T)  # not contiguous
    assert t.as_numpy().flags.c_contiguous and t.shape() == [3, 2] and t.triton_dtype() == 9
    back = pb_utils.Tensor.from_dlpack("y", t)
    assert back.is_cpu() and back.as_numpy().tolist() == t.as_numpy().tolist()
    with pytest.raises(pb_utils.TritonModelException, match="string tensors"):
        pb_utils.Tensor("s", np.array([b"a"], dtype=np.object_)).to_dlpack()


def test_config_lookups():
    config = {"input": [{"name": "A"}], "output": [{"name": "B", "data_type": "TYPE_FP32"}]}
    assert pb_utils.get_input_config_by_name(config, "A") == {"name": "A"}
    assert pb_utils.get_output_config_by_name(config, "B")["data_type"] == "TYPE_FP32"
    assert pb_utils.get_output_config_by_name(config, "C") is None
    assert not pb_utils.using_decoupled_model_transaction_policy(config)
    assert pb_utils.using_decoupled_model_transaction_policy(
        {"model_transaction_policy": {"decoupled": True}}
    )


def test_auto_complete_model_config_checks():
    mc = pb_utils.ModelConfig(
        json.dumps(
            {
                "name": "m",
                "max_batch_size": 8,
                "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [4]}],
                "output": [],
            }
        )
    )
    with pytest.raises(ValueError, match="configuration specified max_batch_size 8"):
        mc.set_max_batch_size(4)
    with pytest.raises(ValueError, match="is missing 'dims' property"):
        mc.add_input({"name": "X", "data_type": "TYPE_FP32"})
    with pytest.raises(ValueError, match="contains property other than"):
        mc.add_output({"name": "O", "data_type": "TYPE_FP32", "dims": [1], "optional": True})
    with pytest.raises(ValueError, match="configuration expects datatype TYPE_FP32"):
        mc.add_input({"name": "IN", "data_type": "TYPE_INT32", "dims": [4]})
    mc.add_output({"name": "O", "data_type": "TYPE_FP32", "dims": [1]})
    mc.set_dynamic_batching()
    mc.set_model_transaction_policy({"decoupled": True})
    with pytest.raises(ValueError, match="trying to change decoupled property"):
        mc.set_model_transaction_policy({"decoupled": False})
    assert mc.as_dict()["output"] == [{"name": "O", "data_type": "TYPE_FP32", "dims": [1]}]
    assert "dynamic_batching" in mc.as_dict()


def test_response_sender_rules():
    sent = []
    sender = pb_utils.InferenceResponseSender(lambda r, f: sent.append((r, f)), True, lambda: 0)
    with pytest.raises(pb_utils.TritonModelException, match="Unsupported flag provided"):
        sender.send(flags=5)
    with pytest.raises(pb_utils.TritonModelException, match="must be provided when the response"):
        sender.send()
    sender.send(pb_utils.InferenceResponse())
    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    with pytest.raises(pb_utils.TritonModelException, match="Response sender has been closed"):
        sender.send(pb_utils.InferenceResponse())
    assert [f for _, f in sent] == [False, True]
    plain = pb_utils.InferenceResponseSender(lambda r, f: None, False, lambda: 0)
    with pytest.raises(pb_utils.TritonModelException, match="cannot send complete final before"):
        plain.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
    plain.send(pb_utils.InferenceResponse())
    with pytest.raises(pb_utils.TritonModelException, match="cannot send more than one"):
        plain.send(pb_utils.InferenceResponse())


def test_request_and_response_parameters_are_json_strings():
    with pytest.raises(pb_utils.TritonModelException, match="Correlation ID must be integer"):
        pb_utils.InferenceRequest(correlation_id=1.5, model_name="m")
    with pytest.raises(pb_utils.TritonModelException, match="bool/int/str"):
        pb_utils.InferenceRequest(model_name="m", parameters={"x": 1.5})
    request = pb_utils.InferenceRequest(model_name="m", parameters={"k": "v", "n": 2})
    assert json.loads(request.parameters()) == {"k": "v", "n": 2}
    response = pb_utils.InferenceResponse(parameters={"done": True})
    assert json.loads(response.parameters()) == {"done": True}
    error = pb_utils.TritonError("nope", pb_utils.TritonError.NOT_FOUND)
    assert (error.message(), error.code()) == ("nope", 2)


def test_metrics_and_bls_need_a_server():
    with pytest.raises(pb_utils.TritonModelException):
        pb_utils.InferenceRequest(model_name="m", requested_output_names=["O"]).exec()
