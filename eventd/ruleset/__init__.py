"""Rules: the YAML format, its loader and checker, matching, the index, templates.

Pure and source-agnostic: turns files into a `RuleSet` and an event into matching rules and
rendered options. Modules: model (Rule, ActionSpec, ThrottleSpec, Problem), positions (YAML
with line/column marks, and the caps on a file), diagnostics (messages, did-you-mean, typo
warnings), loader (files -> RuleSet; check, load_rules), interpolate (`${VAR}`), matching
(match -> closures), index (RuleSet), prefilter, templates (the sandbox) and limits (its
resource limits). Imports `eventd.events`, `eventd.fields`, `eventd.errors`, `eventd.settings`
and the actions registry (for each kind's options); never `sources`, `delivery`, `stores`,
`commands` or `emulator`.
"""
