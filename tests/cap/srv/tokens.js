// Access tokens issued by the token endpoint in server.js.
module.exports = { issued: new Set() }
