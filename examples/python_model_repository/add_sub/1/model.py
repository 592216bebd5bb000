"""A Triton python-backend model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1.

naiad runs this file unchanged (``backend: "python"``); nothing in it names naiad.
"""

import json

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.dtypes = []
        for name in ("OUTPUT0", "OUTPUT1"):
            output = pb_utils.get_output_config_by_name(config, name)
            self.dtypes.append(pb_utils.triton_string_to_numpy(output["data_type"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            in0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            out0 = pb_utils.Tensor("OUTPUT0", (in0 + in1).astype(self.dtypes[0]))
            out1 = pb_utils.Tensor("OUTPUT1", (in0 - in1).astype(self.dtypes[1]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out0, out1]))
        return responses

    def finalize(self):
        pb_utils.Logger.log_info("add_sub: finalize")
