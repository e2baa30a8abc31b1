-- wrk script: POST /letters with a fixed three-line letter; each gets a generated id.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"child":"Load","address":"1 Bench Street","country":"FI","toys":[{"toy_id":"rubiks-cube","quantity":2},{"toy_id":"teddy-bear","quantity":1},{"toy_id":"telescope","quantity":1}]}'
