"""Guards on acting: the loop guard (`loop`: eventd does not act on what it caused) and the
per-object call limit (`calls`: at most N calls per target object per window).

Their state lives in the store (`stores.base.Marks`, `CallLimits`), so a cluster shares it.
Imports `stores.base`, `events`, `errors`; never `actions`, `delivery` or anything above.
"""
