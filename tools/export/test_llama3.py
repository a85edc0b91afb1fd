"""Tests of the Llama-3 family (llava_llama with Llama-3 LMs, conversation format llama_3) in the export tool.
Run with the others: tools/export/.venv/bin/python -m unittest discover -s tools/export -p 'test_*.py'"""

from __future__ import annotations

import json
import os
import tempfile
import unittest

import numpy as np
import ort_telemetry  # noqa: F401  (first: turns onnxruntime's telemetry off before it loads)
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import prompts
import tiny
from checkpoint import PROJECTOR_PREFIX, TOWER_PREFIX, ExportError, load_checkpoint
from export import llava_config, readout_fields
from llava_model import rope_inv_freq
from parity import build_ids

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "..", "test", "fixtures", "models")
TOK = tiny.train_llama3_tokenizer()
_MODELS: dict = {}


def built(variant: str):
    """The tiny model of a variant, built once (calibrating it runs the model on 64 prompts)."""
    if variant not in _MODELS:
        _MODELS[variant] = tiny.tiny_llama3_model(TOK, variant)
    return _MODELS[variant]


class TokenizerTests(unittest.TestCase):
    def test_numbers_up_to_three_digits_are_one_token_and_never_join_the_space(self):
        for text in [str(v) for v in range(1000)] + ["00", "007"]:
            self.assertEqual(len(TOK.encode(text, add_special_tokens=False).ids), 1, text)
        self.assertEqual(TOK.encode("ASSISTANT: 87", add_special_tokens=False).tokens[-3:], [":", "Ġ", "87"])
        self.assertEqual(TOK.encode("1234", add_special_tokens=False).tokens, ["123", "4"])

    def test_ids_bos_once_image_slot_and_the_space_appended(self):
        wid = TOK.encode(" ").ids[-1]
        self.assertEqual(TOK.id_to_token(wid), "Ġ")
        ids = build_ids(TOK, "llama_3", "a <|eot_id|> cat", "image_text_matching", wid)
        bos = TOK.token_to_id("<|begin_of_text|>")
        self.assertEqual(ids[0], bos)
        self.assertEqual(ids.count(bos), 1)
        self.assertEqual(ids.count(prompts.IMAGE_TOKEN_INDEX), 1)
        self.assertEqual(ids[-1], wid)
        self.assertIn(TOK.token_to_id("<|eot_id|>"), ids, "the reference parses control strings in captions")

    def test_readout_fields(self):
        f = readout_fields(TOK, "llama_3")
        self.assertEqual(f["readout"], "single_token_numbers")
        self.assertEqual([TOK.id_to_token(i) for i in f["number_token_ids"]], [str(v) for v in range(101)])
        self.assertEqual(readout_fields(TOK, "qwen_instruct"), {"readout": "digit_chains"})
        self.assertEqual(prompts.single_token_score("100"), 100)
        self.assertIsNone(prompts.single_token_score("087"))
        self.assertEqual(prompts.reference_parse("087"), 87)


class RopeTests(unittest.TestCase):
    def test_llama3_scaling_equals_transformers(self):
        # Llama-3.2-3B's own parameters, and a small original length that moves the tiny model's frequencies.
        for scaling, head_dim in (
            ({"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, 128),
            ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}, 16),
        ):
            for key in ("rope_type", "type"):  # the released config.json files use either spelling
                cfg = LlamaConfig(
                    hidden_size=head_dim * 4, num_attention_heads=4, num_key_value_heads=1, rope_theta=500000.0,
                    max_position_embeddings=131072, rope_scaling={key: "llama3", **scaling},
                )
                want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
                got = rope_inv_freq(cfg, head_dim)
                torch.testing.assert_close(got, want, rtol=0, atol=0)
                plain = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
                self.assertFalse(torch.equal(got, plain), "the scaling changes some frequencies")

    def test_tiny_models_carry_the_features(self):
        m3, m32 = built("llama3"), built("llama3.2")
        c3, c32 = m3.lm.config, m32.lm.config
        self.assertEqual(c3.num_attention_heads // c3.num_key_value_heads, 4)
        self.assertEqual(c32.num_attention_heads // c32.num_key_value_heads, 3)
        self.assertFalse(c3.tie_word_embeddings)
        self.assertIs(m32.lm.lm_head.weight, m32.lm.model.embed_tokens.weight)
        for m in (m3, m32):
            torch.testing.assert_close(rope_inv_freq(m.lm.config, 16), m.lm.model.rotary_emb.inv_freq, rtol=0, atol=0)


class CheckpointTests(unittest.TestCase):
    def save(self, src, tmp: str, tower: str, tok) -> None:
        state = {f"{TOWER_PREFIX}vision_model.{k}": v for k, v in src.vision_tower.state_dict().items()}
        state.update({PROJECTOR_PREFIX + k: v for k, v in src.mm_projector.state_dict().items()})
        # Tied: the released file holds the embedding once (no lm_head.weight).
        state.update({k: v for k, v in src.lm.state_dict().items() if not (src.lm.config.tie_word_embeddings and k == "lm_head.weight")})
        save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(tmp, "model.safetensors"))
        cfg = llava_config(src, "test")
        cfg["mm_vision_tower"] = tower
        json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), default=str)
        tok.save(os.path.join(tmp, "tokenizer.json"))

    def test_llama32_layout_round_trip_picks_llama_3(self):
        src = built("llama3.2")
        with tempfile.TemporaryDirectory() as tmp:
            self.save(src, tmp, "google/siglip2-so400m-patch14-384", TOK)
            model, tok, _, _, _ = load_checkpoint(tmp, None, None)
        self.assertEqual(model.spec.conv_format, "llama_3")
        self.assertEqual(model.spec.projector_type, "linear")
        ids = build_ids(tok, "llama_3", "a dog", "image_text_matching", 220)
        pix = torch.randn(3, 56, 56)
        torch.testing.assert_close(model.reference_logits(ids, pix), src.reference_logits(ids, pix))

    def test_naflex_tower_and_mismatched_name_are_refused(self):
        src = built("llama3")
        with tempfile.TemporaryDirectory() as tmp:
            self.save(src, tmp, "google/siglip2-so400m-patch16-naflex", TOK)
            with self.assertRaises(ExportError) as ctx:
                load_checkpoint(tmp, None, None)
            self.assertIn("NaFlex", str(ctx.exception))
        with tempfile.TemporaryDirectory() as parent:
            tmp = os.path.join(parent, "mlm-filter-llama-3-8b")
            os.makedirs(tmp)
            self.save(src, tmp, "openai/clip-vit-large-patch14-336", tiny.train_llama_tokenizer())
            with self.assertRaises(ExportError) as ctx:
                load_checkpoint(tmp, None, None)
            self.assertIn("Llama-3", str(ctx.exception))


class FixtureTests(unittest.TestCase):
    """The committed fixtures' scoring graph in onnxruntime on the stored pixel_values reproduces the stored PyTorch
    number probabilities and greedy token of every metric's full prompt run alone."""

    def check(self, name: str) -> None:
        import onnxruntime as ort

        from onnx_export import scorer_file
        from scorer_graph import pack_pair

        d = os.path.join(FIXTURES, name)
        with open(os.path.join(d, "reference.json")) as f:
            ref = json.load(f)
        with open(os.path.join(d, "mlm_filter.json")) as f:
            mlm = json.load(f)
        self.assertEqual((mlm["conversation_format"], mlm["readout"]), ("llama_3", "single_token_numbers"))
        numbers = mlm["number_token_ids"]
        sess = ort.InferenceSession(scorer_file(d, "fp32"))
        worst = 0.0
        for case in ref["cases"][::3]:
            img = ref["images"][case["image"]]
            pix = np.fromfile(os.path.join(d, img["pixel_values"]), "<f4").reshape([1, *img["shape"]])
            pk = pack_pair([case["input_ids"]], [], mlm["num_image_tokens"])
            feeds = {k: np.array([pk[v]], np.int64) for k, v in (("input_ids", "ids"), ("position_ids", "position_ids"), ("branch_ids", "branch_ids"), ("chain_ids", "chain_ids"))}
            feeds.update(
                pixel_values=pix,
                readout_positions=np.array([[pk["readout"][0]["prompt"]]], np.int64),
                readout_token_ids=np.array(numbers, np.int64),
            )
            logprobs, top = sess.run(["token_logprobs", "top_token_ids"], feeds)
            worst = max(worst, float(np.abs(np.exp(logprobs[0, 0]) - np.array(case["p"])).max()))
            self.assertEqual(int(top[0, 0]), case["greedy_token"])
        self.assertLess(worst, 1e-4, f"{name}: max abs diff {worst}")
        scores = [c["greedy_integer"] for c in ref["cases"]]
        self.assertGreater(len(set(scores)), 3, name)

    def test_llama3(self):
        self.check("tiny-llava-llama3")

    def test_llama32(self):
        self.check("tiny-llava-llama32")


if __name__ == "__main__":
    unittest.main()
