// Used by main once it parses `ctl top`; drop the allow then.
#[allow(dead_code)]
mod top;

fn main() {}
