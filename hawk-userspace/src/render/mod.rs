//! Renderers: Profile → SVG flamegraph, speedscope JSON, Hawk JSON, folded stacks.
