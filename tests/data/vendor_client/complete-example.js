// The vendor's own browser client, AS WRITTEN on its page (not ours: do not "fix" it).
// Source: docs.soca.ai "Voice Stream Websocket" (shared/seeds/voice-stream-websocket.md in
// the project's notes), section "Complete Example", its four code tabs in page order
// ("Basic Setup", "Send Audio", "Float32 to Int16", "Play Audio"), then stopAllAudio from
// "Barge-in Control" > "Sequence Number Logic" > "Stop Old Audio Function", which the
// glue's handleBarge calls. Only the indentation of the page's markdown was removed.
// tests/browser.py fills in the URL, private key, session id and agent id placeholders;
// glue.js defines what the page leaves undefined (pendingChunks, handleBarge, ...).
// The "Send Audio" tab awaits at top level, so this runs as an ES module.

// ---- Complete Example > Basic Setup ----
const ws = new WebSocket("wss://api.soca.ai/voice-ws");
ws.binaryType = "arraybuffer";

ws.onopen = () => {
  // Send start message
  ws.send(JSON.stringify({
    type: "start",
    private_key: "<private_key>",
    session_id: "<session_id>",
    agent_id: "<agent_id>",
    lang: "id",
    sr: 16000
  }));
};

ws.onmessage = (e) => {
  const msg = JSON.parse(e.data);
  
  // Handle different message types
  switch(msg.type) {
    case "stt.partial":
      console.log("Partial:", msg.text);
      break;
      
    case "stt.final":
      console.log("Final:", msg.text);
      break;
      
    case "barge":
      handleBarge(msg.seq);
      break;
  }
  
  // Handle audio chunks
  if (msg.stepType === "sentence") {
    handleAudioChunk(msg);
  }
};

// ---- Complete Example > Send Audio ----
// Capture microphone
const stream = await navigator.mediaDevices.getUserMedia({
  audio: {
    sampleRate: 16000,
    channelCount: 1,
    echoCancellation: true,
    noiseSuppression: true
  }
});

const audioContext = new AudioContext({ sampleRate: 16000 });
const source = audioContext.createMediaStreamSource(stream);
const processor = audioContext.createScriptProcessor(4096, 1, 1);

processor.onaudioprocess = (e) => {
  const float32 = e.inputBuffer.getChannelData(0);
  const int16 = convertFloat32ToInt16(float32);
  
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(int16.buffer);
  }
};

source.connect(processor);
processor.connect(audioContext.destination);

// ---- Complete Example > Float32 to Int16 ----
function convertFloat32ToInt16(float32Array) {
  const int16Array = new Int16Array(float32Array.length);
  
  for (let i = 0; i < float32Array.length; i++) {
    const s = Math.max(-1, Math.min(1, float32Array[i]));
    int16Array[i] = s < 0 ? s * 0x8000 : s * 0x7FFF;
  }
  
  return int16Array;
}

// ---- Complete Example > Play Audio ----
function handleAudioChunk(msg) {
  const key = `${msg.seq}_${msg.sentenceId}`;
  
  // Collect chunks
  if (!pendingChunks.has(key)) {
    pendingChunks.set(key, []);
  }
  
  if (msg.audioBase64) {
    pendingChunks.get(key).push(msg.audioBase64);
  }
  
  // Play when complete
  if (msg.isLastChunk) {
    const chunks = pendingChunks.get(key);
    const fullBase64 = chunks.join('');
    
    // Decode and play
    const audioData = atob(fullBase64);
    const buffer = new ArrayBuffer(audioData.length);
    const view = new Uint8Array(buffer);
    
    for (let i = 0; i < audioData.length; i++) {
      view[i] = audioData.charCodeAt(i);
    }
    
    const blob = new Blob([buffer], { type: 'audio/mp3' });
    const url = URL.createObjectURL(blob);
    const audio = new Audio(url);
    
    audio.play();
    audio.onended = () => URL.revokeObjectURL(url);
    
    pendingChunks.delete(key);
  }
}

// ---- Barge-in Control > Sequence Number Logic > Stop Old Audio Function ----
function stopAllAudio(beforeSeq) {
  audioPlayers.forEach((player, key) => {
    const [seq] = key.split('_');
    if (parseInt(seq) < beforeSeq) {
      player.audio.pause();
      player.audio.currentTime = 0;
      audioPlayers.delete(key);
    }
  });
}
