"""Rules: the YAML format, its loader and checker, matching, the prefilter index, templates.

Pure and source-agnostic: turns files into a `RuleSet` and an event into matching rules and
rendered options. Imports `eventd.events`, `eventd.fields`, `eventd.errors` and the actions
registry (for each kind's options); never `sources`, `delivery`, `stores`, `commands` or `emulator`.
"""
