"""The predecessor's code paths, re-implemented as the baseline that ``icg bench`` times the library
against (the library itself never runs them).

- CLIP-prefix: its decoding loop, one image at a time, GPT-2 re-run over the whole sequence each step.
- SBG, per image (its ``generate_caption``): the prompts padded to CLIP's full context and encoded on
  every image; 5 sequential ``generate`` calls of batch 1; its caption post-processing.
"""

from __future__ import annotations

import torch

from icg.sbg.bank import PromptSet
from icg.text import decode_tokens

#: The candidates the predecessor's SBG sampled per image.
CANDIDATES = 5


def prefix_decode(model, prefix: torch.Tensor, tokens: int) -> list[int]:
    """The predecessor's loop for one image: the whole sequence re-run through GPT-2 at every step
    (no cache), its top-p (0.8) filter over the sorted vocabulary, then the arg-max."""
    generated, out = prefix, []
    with torch.no_grad():
        for _ in range(tokens):
            logits = model.gpt(inputs_embeds=generated).logits[:, -1, :].float()
            sorted_logits, order = torch.sort(logits, descending=True)
            remove = torch.cumsum(sorted_logits.softmax(-1), dim=-1) > 0.8
            remove[..., 1:] = remove[..., :-1].clone()
            remove[..., 0] = False
            logits[:, order[remove]] = -float("inf")
            nxt = logits.argmax(-1)
            out.append(int(nxt))
            generated = torch.cat((generated, model.gpt.transformer.wte(nxt[:, None])), dim=1)
    return out



def padded_encode(clip, prompts: list[str]) -> torch.Tensor:
    """The predecessor's text encode: tokens padded to the full context (77), the whole tower run."""
    tokens = clip.tokenize(prompts)
    with torch.inference_mode():
        feats = clip.model.encode_text(tokens.to(clip.device)).float().cpu()
    return torch.nn.functional.normalize(feats, dim=-1)


def sbg_prompt_sets(selector, image: torch.Tensor, selection) -> list[PromptSet]:
    """The prompt sets the predecessor encoded for this image: the tertiary lists of the sub-categories
    its selection chose, and the final keyword list (bare words)."""
    bank = selector.bank
    sets = []
    for keyword in selection.keywords:
        if keyword.step.endswith(":sub"):
            tertiary = bank.tertiary(keyword.step.split(":")[0], keyword.text)
            if tertiary is not None:
                sets.append(tertiary)
    if {"people", "animal"} & set(selection.subjects):
        probs = (selector.config.logit_scale * image @ bank.features("activity").T).softmax(-1)
        tertiary = bank.tertiary("activity", bank.prompt_set("activity").labels[int(probs.argmax())])
        if tertiary is not None:
            sets.append(tertiary)
    words = tuple(selection.texts)
    sets.append(PromptSet("final", words, words))
    return sets


def sbg_captions(tokenizer, outs: list[torch.Tensor]) -> list[str]:
    """Its post-processing: the text up to the first ".", then " ." (the re-rank encodes these)."""
    # decode_tokens: transformers 4.x's decoding (with its space clean-up), which the predecessor ran on
    return [decode_tokens(tokenizer, o).split(".")[0].strip() + " ." for o in outs]


def sbg_generate(
    lm, ids: torch.Tensor, new_tokens: int, eos: int, calls: int = CANDIDATES
) -> list[torch.Tensor]:
    """Sequential calls of batch 1 (5 per image), as the predecessor's pipeline made them (sampling,
    top-k 50)."""
    outs = []
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        for _ in range(calls):
            out = lm.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                top_k=50,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=eos,
            )
            outs.append(out[0, ids.shape[1] :])
    return outs
