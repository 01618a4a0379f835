"""An app whose import fails."""

raise ImportError("broken_import: this app cannot be imported")
