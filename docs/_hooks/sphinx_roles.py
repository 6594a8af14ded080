"""MkDocs hook: render Sphinx cross-reference roles (:class:`X`, :func:`f` ...) in docstrings as code.

Our docstrings use Sphinx roles, which mkdocstrings' Google-style parser leaves as literal text.
"""

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):(?=<code>|`)")


def on_page_content(html, **kwargs):
    return _ROLE.sub("", html)
