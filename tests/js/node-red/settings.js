// Node-RED settings for tests/test_node_red.py: headless (no editor, no admin API, so no
// credentials prompt and nothing to log in to), loopback only, flow credentials unencrypted
// (the example flow has none), the http-in nodes of the flow at the root.
module.exports = {
    uiHost: "127.0.0.1",
    httpAdminRoot: false,
    httpNodeRoot: "/",
    credentialSecret: false,
    logging: {console: {level: "info", metrics: false, audit: false}},
};
