// Authentication of the CAP test server, configured as cds.requires.auth.impl.
// It accepts HTTP Basic auth for the SAP communication user
// (FONTE_CAP_USER, FONTE_CAP_PASSWORD) and Bearer tokens issued by the
// token endpoint in server.js, and rejects anything else with 401.
const cds = require('@sap/cds')
const tokens = require('./tokens')

module.exports = function auth (req, res, next) {
  const header = req.headers.authorization || ''
  const [scheme, credentials = ''] = header.split(' ')
  let user = null
  if (scheme.toLowerCase() === 'basic') {
    const [id, password] = Buffer.from(credentials, 'base64').toString().split(':')
    if (id === process.env.FONTE_CAP_USER && password === process.env.FONTE_CAP_PASSWORD) user = id
  } else if (scheme.toLowerCase() === 'bearer' && tokens.issued.has(credentials)) {
    user = process.env.FONTE_CAP_CLIENT_ID
  }
  if (user === null) {
    res.set('WWW-Authenticate', 'Basic realm="CAP test server"').sendStatus(401)
    return
  }
  cds.context.user = req.user = new cds.User({ id: user })
  next()
}
