"""Token-in/token-out conversation encoding: prompt ids, and the ids appended after a turn for an observation.

The multi-turn rollout never decodes and re-encodes a history (the bug behind verl #3720/#3960, SkyRL #123,
TRL #5144): the trajectory is the prompt ids, then per turn the action ids exactly as sampled, then the ids of the
environment's reply. Those reply ids come from the chat template's *delta* for the reply message, computed on a fixed
two-message base conversation:

    close_ids        = what the template writes after an assistant message's content (ChatML: ``<|im_end|>\\n``),
                       minus the end-of-turn token when the policy already sampled it (the ``\\n`` verl #3720 dropped);
    observation_ids  = template(base + [reply], add_generation_prompt) - template(base)

so the sequence equals what the template gives for the whole conversation whenever the template is append-only.
Templates that are not (verl #6719: e.g. ones that rewrite earlier turns) are caught by ``template_mismatch``, which
the rollout reports per episode as a metric (and raises on in debug mode) instead of training on a silent difference.

Prompts given as plain strings (with ``chat_template="auto"``) are used verbatim, and so are string observations in
that mode: their ids are the tokenizer's encoding of the observation text, with no template around it.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Sequence

Message = dict[str, str]

_BASE_USER = "Hi."
_BASE_ASSISTANT = "Hello."


class ChatFormat:
    """Encodes prompts and observation replies for one tokenizer and template mode (``"auto"``, True or False)."""

    def __init__(self, tokenizer, chat_template: str | bool = "auto", eos_token_ids: Sequence[int] = ()):
        if chat_template not in ("auto", True, False):
            raise ValueError(f"chat_template must be 'auto', True or False, got {chat_template!r}")
        self.tokenizer = tokenizer
        self.mode = chat_template
        self.eos_token_ids = set(int(i) for i in eos_token_ids)

    # ---- prompts -------------------------------------------------------------------------------------------------
    def uses_template(self, prompt: str | list[Message]) -> bool:
        """True when ``prompt`` is rendered with the chat template (messages, or any prompt with mode True)."""
        return isinstance(prompt, list) or self.mode is True

    def as_messages(self, prompt: str | list[Message]) -> list[Message]:
        return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    def format_prompt(self, prompt: str | list[Message]) -> str:
        """The exact text fed to the model for ``prompt``."""
        if not self.uses_template(prompt):
            return prompt  # type: ignore[return-value]
        if self.mode is False:
            raise ValueError("chat_template=False but a prompt is a list of messages; pass plain strings instead")
        self._require_template()
        return self.tokenizer.apply_chat_template(self.as_messages(prompt), tokenize=False, add_generation_prompt=True)

    def prompt_ids(self, prompt: str | list[Message]) -> list[int]:
        # Chat templates already contain any BOS they want; plain strings get the tokenizer's usual specials.
        text = self.format_prompt(prompt)
        return self.encode(text, add_special_tokens=not self.uses_template(prompt))

    # ---- replies -------------------------------------------------------------------------------------------------
    @cached_property
    def close_ids(self) -> list[int]:
        """Ids the template writes after an assistant message's content (e.g. ``<|im_end|>``, ``\\n``)."""
        self._require_template()
        user = [{"role": "user", "content": _BASE_USER}]
        head = self._render(user, add_generation_prompt=True) + _BASE_ASSISTANT
        full = self._render(user + [{"role": "assistant", "content": _BASE_ASSISTANT}], add_generation_prompt=False)
        if not full.startswith(head):
            raise ValueError("the chat template does not render an assistant message as prompt + content + suffix; "
                             "multi-turn rollouts need an append-only template")
        return self.encode(full[len(head):])

    def reply_ids(self, action_ids: Sequence[int], observation: Any, templated: bool, role: str) -> list[int]:
        """Ids appended after an action: the rest of the action's end-of-turn, then the observation and the
        generation prompt of the next assistant turn (templated), or the observation text as is (plain)."""
        messages = self.observation_messages(observation, role)
        if not templated:
            return self.encode("".join(m["content"] for m in messages))
        close = self.close_ids
        if action_ids and close and action_ids[-1] == close[0]:
            close = close[1:]  # the policy sampled the end-of-turn token itself: keep its id, add what follows
        elif action_ids and action_ids[-1] in self.eos_token_ids and close and close[0] in self.eos_token_ids:
            close = close[1:]  # ended on another EOS id the template does not write: still one end of turn
        return list(close) + self._observation_delta(messages)

    def observation_messages(self, observation: Any, role: str) -> list[Message]:
        if isinstance(observation, str):
            return [{"role": role, "content": observation}]
        if isinstance(observation, dict):
            return [observation]
        return list(observation)

    def _observation_delta(self, messages: list[Message]) -> list[int]:
        base = [{"role": "user", "content": _BASE_USER}, {"role": "assistant", "content": _BASE_ASSISTANT}]
        before = self._render(base, add_generation_prompt=False)
        after = self._render(base + messages, add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("the chat template rewrites earlier turns when a message is added; multi-turn rollouts "
                             "need an append-only template")
        return self.encode(after[len(before):])

    # ---- checks --------------------------------------------------------------------------------------------------
    def template_mismatch(self, ids: Sequence[int], messages: list[Message]) -> int:
        """Positions where ``ids`` (a trajectory: prompt, actions, replies) differ from the template's own encoding
        of ``messages`` (the whole conversation, the last message an assistant turn), compared over the common
        length plus any length difference; 0 means what we train on is what the template would give."""
        reference = self.encode(self._render(messages, add_generation_prompt=False))
        n = min(len(ids), len(reference))
        differ = sum(a != b for a, b in zip(ids[:n], reference[:n]))
        # The template ends the last assistant turn with its full close (e.g. "<|im_end|>\n"); the trajectory ends
        # where the policy stopped, so only a reference longer by more than that close counts.
        tail = len(reference) - len(ids)
        extra = 0 if 0 <= tail <= len(self.close_ids) else abs(tail)
        return differ + extra

    # ---- helpers -------------------------------------------------------------------------------------------------
    def _require_template(self) -> None:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("a prompt is a list of messages (or chat_template=True) but the tokenizer has no chat "
                             "template")

    def _render(self, messages: list[Message], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])
