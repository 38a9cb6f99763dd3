"""lmms-eval models that run a visprune method: lmms-eval's own Hugging Face wrappers, pruned.

Each wrapper subclasses an lmms-eval model class, lets it load the checkpoint exactly as the
unpruned baseline does, and then calls :func:`visprune.apply` on the loaded model. The method and
its parameters come from ``--model_args``::

    python -m lmms_eval --model visprune_llava_hf \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=otprune,budget=64,gamma=0.01 \\
        --tasks gqa --batch_size 8 --log_samples --output_path results/

``method`` is required (``method=keepall`` is the unpruned baseline through the same code);
``budget``, ``positions``, ``newlines`` and every other argument that the lmms-eval class does
not take go to visprune, whose errors (unknown method or parameter, bad budget) stop the run
before the model is loaded.

lmms-eval's command line reports an exception of its model class and then exits with status 0;
so when a wrapper fails under that command line (``python -m lmms_eval`` or ``lmms-eval``), the
run stops with a non-zero status instead: 2 and one line for a bad ``--model_args``, 1 and the
traceback for any other failure (:mod:`.failures`). Called from Python, the wrappers raise as
usual.

``generate_until`` and ``loglikelihood`` are implemented once for every family (:mod:`.base`;
one small module per family holds its wrappers), batched (``--batch_size``, left padding),
because the lmms-eval LLaVA classes refuse batches and score loglikelihoods from logit positions
that pruning shifts. Each result carries the sample's token
counts (:class:`PrunedTokenCounts`: ``visual_tokens`` before pruning, ``visual_tokens_kept``,
``input_tokens`` the language model prefilled), which lmms-eval writes into every logged sample;
the model time and mean counts of each request type go to the ``throughput`` section of the
results file.

Prompts follow lmms-eval's chat conventions: a chat task's messages, or for simple tasks the
visuals followed by the text (or placed at ``<image>`` marks in it), rendered with the
processor's chat template. A processor without a chat template gets the message parts
concatenated in order, an image as the processor's image token.
"""

from .arguments import ADAPTER_OPTIONS
from .base import Pruned, PrunedTokenCounts
from .gemma3 import VispruneGemma3Simple
from .internvl import VispruneInternVLHf
from .llava import VispruneLlavaHf, VispruneLlavaHfSimple
from .prompts import IMAGE_MARK
from .qwen2_5_vl import VispruneQwen2_5_VL, VispruneQwen2_5_VLSimple
from .qwen3_vl import VispruneQwen3_VL, VispruneQwen3_VLSimple

__all__ = [
    "ADAPTER_OPTIONS",
    "IMAGE_MARK",
    "Pruned",
    "PrunedTokenCounts",
    "VispruneGemma3Simple",
    "VispruneInternVLHf",
    "VispruneLlavaHf",
    "VispruneLlavaHfSimple",
    "VispruneQwen2_5_VL",
    "VispruneQwen2_5_VLSimple",
    "VispruneQwen3_VL",
    "VispruneQwen3_VLSimple",
]
