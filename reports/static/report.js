/* Draw every figure whose JSON sits in <script type="application/json" data-plot="DIV-ID">. */
(function () {
  var config = {displayModeBar: false, responsive: true};
  var sources = document.querySelectorAll("script[data-plot]");
  for (var i = 0; i < sources.length; i++) {
    var figure = JSON.parse(sources[i].textContent);
    Plotly.newPlot(sources[i].getAttribute("data-plot"), figure.data, figure.layout, config);
  }
})();
