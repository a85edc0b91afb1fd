"""MLM-filter prompts and input-id construction, as the reference scorer builds them.

Source of truth: Victorwz/MLM_Filter mlm_filter_scoring_datacomp_batch_inference_v2.py (instruction template and
criteria) and Victorwz/LLaVA-Unified llava/conversation.py (qwen_instruct = MPT separator style, llava_v1 and
llama_3 = TWO separator style with sep " "; llama_3's system text says "user" where llava_v1's says "human").
The texts below are byte-identical to docs/reference/mlm-filter-prompts.json (committed verbatim); test_export.py
checks that. Note: that JSON writes the newline of `user_turn` and of
the conversation prompts as the two characters "\\n"; the reference code uses a real newline, and so do we.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200

INSTRUCTION_TEMPLATE = (
    "Text Caption: {caption}\n\n{criteria} A higher score indicates higher level of {aspect}. Ensure that your scoring "
    "is nuanced and uses the entire range from 0 to 100, reflecting the subtle differences. The score should be given "
    "as an integer, with each number between 0 and 100 considered as a potential score, avoiding the tendency to round "
    "to multiples of 5 or 10. Please first output a single line containing the value indicating the scores. In the "
    "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias."
)

CRITERIA: dict[str, str] = {
    "image_text_matching": (
        "Please evaluate if the provided text caption accurately represents the main features and objects of the "
        "image. The caption doesn't need to detail every aspect of the image, but it should capture its primary theme. "
        "Rate the overall quality of the text caption's match to the image on a scale of 1-100, considering the "
        "criteria mentioned."
    ),
    "object_detail_fulfillment": (
        "Please evaluate the text caption to determine if it provides detailed descriptions of objects that align with "
        "the image. Specifically, assess if the caption sufficiently describes the color, size, position, shape, "
        "material, etc., of the objects. Afterward, rate the caption's overall accuracy in capturing object details "
        "from the image on a scale of 1-100, based on the criteria provided."
    ),
    "caption_text_quality": (
        "Please evaluate the text caption based on the following criteria: Grammatical Correctness, Diversity of "
        "Vocabulary (e.g., the range and uniqueness of words used), Fluency (e.g., smoothness and natural flow of "
        "sentences), Readability, Length, and Structure. Assign an overall quality score on a scale of 1-100."
    ),
    "semantic_understanding": (
        "Evaluate the given text caption in relation to its corresponding image. Your goal is to determine if the text "
        "caption provides additional semantic information that isn't readily apparent just from the image itself.\n\n"
        "For example:\n\n"
        '1. If the image mentions "a man" but the caption elaborates he is a "homeless man" or a "businessman," then '
        "the caption is enriching the semantic context.\n"
        "2. If the caption introduces concepts like the mathematical tangent function, which require in-depth "
        "knowledge to deduce, it is imparting external semantics.\n"
        "3. Captions revealing specific location addresses, festival details, or other nuanced data not easy to infer "
        "from the image also provide external semantic information.\n"
        "4. Directly identifying specific entities in the image such as buildings, people, bird species, animal "
        "breeds, car models, engines, etc., in the caption introduces additional insights.\n"
        "5. Should the image act as a contextual backdrop and the caption describes elements not explicitly showcased "
        "in the image, it has semantic depth.\n"
        "6. Lastly, if the caption depicts relationships between the subjects in the image, which need commonsense "
        "knowledge to understand, it should be considered semantically rich.\n\n"
        "Please assess and determine the extent of semantic enrichment the caption provides over the image. Rate the "
        "text caption's semantic depth on a scale from 1 to 100."
    ),
}

METRICS = tuple(CRITERIA)

USER_TURN = IMAGE_TOKEN + "\n{instruction}"

# Conversation wrappers with `{user_turn}` as the only placeholder (llava/conversation.py get_prompt, one user
# message followed by an empty assistant message).
CONVERSATION_FORMATS: dict[str, str] = {
    "qwen_instruct": (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|><|im_start|>user\n{user_turn}<|im_end|>"
        "<|im_start|>assistant\n"
    ),
    "llava_v1": (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: {user_turn} ASSISTANT:"
    ),
    "llama_3": (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: {user_turn} ASSISTANT:"
    ),
}

# The v2 script generates one token for Llama-3 models (their tokenizer holds 0..999 as single tokens), two otherwise.
MAX_NEW_TOKENS_IN_REFERENCE = {"qwen_instruct": 2, "llava_v1": 2, "llama_3": 1}

# The BOS token the tokenizer prepends to every chunk (tokenizer_image_token keeps it once); None: no BOS.
BOS_TOKENS = {"qwen_instruct": None, "llava_v1": "<s>", "llama_3": "<|begin_of_text|>"}

# How the score is read. digit_chains: the answer is spelled digit by digit ("8","7"; "1","0","0"), read along candidate
# chains. single_token_numbers: every number 0..100 is one token (Llama-3: the pre-tokenizer splits digit runs into
# groups of up to 3, and " 87" is never one token), so the answer is the one token after the whitespace id.
READOUTS = {"qwen_instruct": "digit_chains", "llava_v1": "digit_chains", "llama_3": "single_token_numbers"}


def instruction(caption: str, metric: str) -> str:
    # str.format would interpret braces inside the caption; substitute the fields one at a time instead, caption last.
    text = INSTRUCTION_TEMPLATE.replace("{criteria}", CRITERIA[metric]).replace("{aspect}", metric.replace("_", " "))
    return text.replace("{caption}", caption, 1)


def build_prompt(conv_format: str, caption: str, metric: str) -> str:
    """The exact prompt string of the reference scorer for one pair and metric."""
    user_turn = USER_TURN.replace("{instruction}", instruction(caption, metric), 1)
    return CONVERSATION_FORMATS[conv_format].replace("{user_turn}", user_turn, 1)


def prompt_parts(conv_format: str) -> dict:
    """The prompt split around its image slot and caption, for consumers that assemble ids piecewise."""
    full = CONVERSATION_FORMATS[conv_format].replace("{user_turn}", USER_TURN, 1)
    before_image, after_image = full.split(IMAGE_TOKEN, 1)
    per_metric = {}
    for metric in METRICS:
        text = after_image.replace("{instruction}", instruction("\x00", metric), 1)
        head, tail = text.split("\x00", 1)
        per_metric[metric] = tail
    return {
        "before_image": before_image,
        "after_image_before_caption": head,
        "after_caption": per_metric,
    }


def image_slot_split(prompt: str, conv_format: str) -> tuple[str, str]:
    """Split at the template's image slot only. A caption that contains the text '<image>' keeps it as text.

    The reference splits at every '<image>' occurrence; with a user caption that would splice image features into
    the caption. The slot is the first occurrence, because the caption comes after it in every format.
    """
    head = CONVERSATION_FORMATS[conv_format].split("{user_turn}", 1)[0]
    assert prompt.startswith(head + IMAGE_TOKEN), "prompt does not start with the conversation head and image slot"
    cut = len(head)
    return prompt[:cut], prompt[cut + len(IMAGE_TOKEN) :]


def tokenizer_image_token(
    encode: Callable[[str], Sequence[int]], prompt: str, conv_format: str, bos_token_id: int | None
) -> list[int]:
    """LLaVA's tokenizer_image_token restricted to the template slot.

    `encode(text)` must return ids with the tokenizer's special tokens added (BOS for LLaMA, nothing for Qwen), as
    `tokenizer(chunk).input_ids` does in the reference. Each chunk is tokenized on its own; a leading BOS is kept
    once at the very start and dropped from the later chunks.
    """
    chunks = [list(encode(c)) for c in image_slot_split(prompt, conv_format)]
    ids: list[int] = []
    offset = 0
    if chunks[0] and bos_token_id is not None and chunks[0][0] == bos_token_id:
        offset = 1
        ids.append(bos_token_id)
    ids.extend(chunks[0][offset:])
    ids.append(IMAGE_TOKEN_INDEX)
    ids.extend(chunks[1][offset:])
    return ids


_FIRST_INT = re.compile(r"^\s*(\d+)")


def reference_parse(text: str) -> int | None:
    """The reference's reading of the generated text: int() of the first line (None where int() would raise)."""
    line = text.strip().split("\n")[0].strip()
    try:
        return int(line)
    except ValueError:
        return None


def score_number(text: str) -> int | None:
    """The score the scorer reads from greedy text: its leading digits, complete after two (a third digit would pass
    100) except after "10", which a third "0" makes 100. None when the text does not start with a digit."""
    m = _FIRST_INT.match(text)
    if not m:
        return None
    digits = m.group(1)
    return 100 if digits.startswith("100") else int(digits[:2])


def leading_int(text: str) -> int | None:
    """The integer made by the leading digits of the generated text (None when it does not start with a digit)."""
    m = _FIRST_INT.match(text)
    return int(m.group(1)) if m else None


_CANONICAL_NUMBER = re.compile(r"0|[1-9][0-9]?|100")


def number_token_texts() -> list[str]:
    """The texts of the single-token-numbers readout, in score order: "0", "1", ..., "100"."""
    return [str(v) for v in range(101)]


def single_token_score(text: str) -> int | None:
    """The default mode's reading of a single-token answer: the number when the token is one of "0".."100", else None
    (a token such as "087", "250" or a word is no score 0..100; reference mode reads it with reference_parse)."""
    return int(text) if _CANONICAL_NUMBER.fullmatch(text) else None
