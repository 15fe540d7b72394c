// The paywall page's behaviour: watch the checkout, pay with a browser wallet.
// No framework, no external code: the machine serving this may be offline.
(function () {
  "use strict";
  var root = document.getElementById("paywall");
  if (!root) return;
  var T = JSON.parse(document.getElementById("paywall-texts").textContent);
  var statusEl = document.getElementById("status");
  var button = document.getElementById("pay-with-wallet");
  var help = document.getElementById("wallet-help");
  var data = root.dataset;
  var done = false;

  function say(text, error) {
    if (!statusEl) return;
    statusEl.textContent = text;
    statusEl.classList.toggle("error", !!error);
  }

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_, k) {
      return values[k] === undefined ? "" : String(values[k]);
    });
  }

  function opened() {
    done = true;
    say(T.status_paid);
    // The answer that said "paid" set the grant's cookie: ask again.
    window.location.reload();
  }

  function expired() {
    done = true;
    say(T.status_expired);
    window.location.reload();
  }

  // --- the checkout's status (a phone wallet pays it) ------------------------------
  function poll() {
    if (done || !data.statusUrl) return;
    fetch(data.statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        if (s.status === "paid") return opened();
        if (s.status === "expired") return expired();
        if (s.status === "underpaid") say(fill(T.status_underpaid, s), true);
        else if (s.status === "refused") say(fill(T.status_refused, s), true);
        setTimeout(poll, 1500);
      })
      .catch(function () { setTimeout(poll, 3000); });
  }

  var expires = Number(data.expires) * 1000;
  if (expires) {
    setTimeout(expired, Math.max(0, expires - Date.now()));
  }
  setTimeout(poll, 1000);

  // --- a BRC-100 wallet on this computer ------------------------------------------
  function wallet(call, args) {
    return fetch(data.walletUrl.replace(/\/$/, "") + "/" + call, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(args),
    }).then(function (r) {
      if (!r.ok) throw new Error("wallet answered " + r.status);
      return r.json();
    });
  }

  function randomBase64(n) {
    var bytes = new Uint8Array(n);
    crypto.getRandomValues(bytes);
    return btoa(String.fromCharCode.apply(null, bytes));
  }

  function toBase64(numbers) {
    var s = "";
    for (var i = 0; i < numbers.length; i++) s += String.fromCharCode(numbers[i]);
    return btoa(s);
  }

  function payWithWallet() {
    button.disabled = true;
    help.hidden = true;
    say(T.status_paying);
    var prefix = randomBase64(16);
    var time = String(Date.now());
    var sender;
    var satoshis = Number(data.satoshis);
    wallet("getPublicKey", { identityKey: true })
      .catch(function () {
        throw { noWallet: true };
      })
      .then(function (me) {
        sender = me.publicKey;
        // BRC-29: the key this payment goes to, derived by the wallet itself.
        return wallet("getPublicKey", {
          protocolID: [2, "3241645161d8"],
          keyID: prefix + " " + btoa(time),
          counterparty: data.server,
        });
      })
      .then(function (derived) {
        return fetch("/.well-known/farebox/p2pkh/" + derived.publicKey).then(function (r) {
          return r.json();
        });
      })
      .then(function (script) {
        return wallet("createAction", {
          description: "Payment for " + data.resource,
          outputs: [{ lockingScript: script.script, satoshis: satoshis,
                      outputDescription: "Farebox payment" }],
          options: { randomizeOutputs: false },
        });
      })
      .then(function (action) {
        return fetch(data.payUrl, {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({
            beef: toBase64(action.tx), sender: sender, nonce: prefix, time: time,
            vout: 0, url: data.resource, method: data.method,
          }),
        });
      })
      .then(function (r) {
        return r.json().then(function (body) {
          if (r.ok) return opened();
          var detail = body.detail || body.title || String(r.status);
          if (r.status === 503) say(fill(T.status_retry, { detail: detail }), true);
          else say(fill(T.status_refused, { detail: detail }), true);
          button.disabled = false;
        });
      })
      .catch(function (err) {
        button.disabled = false;
        if (err && err.noWallet) {
          help.hidden = false;
          say(T.status_waiting);
        } else {
          say(fill(T.status_refused, { detail: String(err && err.message || err) }), true);
        }
      });
  }

  if (button) button.addEventListener("click", payWithWallet);
})();
