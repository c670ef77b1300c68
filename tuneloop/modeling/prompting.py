"""How a user's prompt becomes model input, the same in training, evaluation and serving."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Prompting:
    """How a user's prompt becomes model input: the tokenizer's chat template with an optional system
    prompt, or ``template`` (with ``{prompt}``) for a base without one."""

    system_prompt: str | None = None
    template: str = "### Question:\n{prompt}\n\n### Answer:\n"

    def render(self, tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
        if getattr(tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            messages.append({"role": "user", "content": prompt})
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        text = self.template.format(prompt=prompt)
        return f"{self.system_prompt}\n\n{text}" if self.system_prompt else text
