// Start-up of the CAP test server: `cds serve` loads this file in place of
// @sap/cds/server.js. It makes the server listen on 127.0.0.1 only and adds
// an OAuth2 client-credentials token endpoint in place of Entra ID,
// so the Dataverse dialect can sign in as it does against Dynamics 365.
// FONTE_CAP_CLIENT_ID and FONTE_CAP_CLIENT_SECRET set the accepted client;
// srv/auth.js checks the tokens it issues.
const cds = require('@sap/cds')
const crypto = require('node:crypto')
const tokens = require('./srv/tokens')

const TOKEN_LIFETIME_SECONDS = 3600

cds.on('bootstrap', (app) => {
  const listen = app.listen.bind(app)
  app.listen = (port) => listen(port, '127.0.0.1')
  app.post('/oauth2/v2.0/token', (req, res) => {
    let body = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => { body += chunk })
    req.on('end', () => {
      const form = new URLSearchParams(body)
      const valid = form.get('grant_type') === 'client_credentials'
        && form.get('client_id') === process.env.FONTE_CAP_CLIENT_ID
        && form.get('client_secret') === process.env.FONTE_CAP_CLIENT_SECRET
      if (!valid) {
        res.status(401).json({ error: 'invalid_client',
          error_description: 'client_id or client_secret is invalid' })
        return
      }
      const token = crypto.randomBytes(24).toString('base64url')
      tokens.issued.add(token)
      res.json({ token_type: 'Bearer', expires_in: TOKEN_LIFETIME_SECONDS, access_token: token })
    })
  })
  // Drops every issued token, so a test can see the dialect renew one after a 401.
  app.post('/test/expire-tokens', (_req, res) => {
    tokens.issued.clear()
    res.sendStatus(204)
  })
})

module.exports = cds.server
