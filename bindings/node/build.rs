fn main() {
    // Links the addon so that Node's N-API symbols resolve when Node loads it.
    napi_build::setup();
}
