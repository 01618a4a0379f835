"""A helper module, imported relatively by inference.py."""


def shout(text: str) -> str:
    return text.upper() + "!"
